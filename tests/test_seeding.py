"""The project's random streams (``tbcore.seeding``): one number per use, and the reserved
seeds of 2³² or more, whose 32-bit words alias streams of small seeds, alias none in use."""

from tbcore.seeding import derived_seed
from theorybench import evaluation, sampling, training
from theorybench.denoisers.baselines import CALIBRATION_SEED
from theorybench.experiments import memorization_sweep as sweep

STREAMS = {  # every stream number a block_generator or derived_seed call uses
    "images (datasets_synth)": 0, "a finite set's permutation (datasets_synth)": 1,
    "evaluation noise": evaluation.NOISE_STREAM,
    "noise on training images": evaluation.TRAINING_IMAGES_STREAM,
    "stochastic sampler": sampling.SAMPLING_STREAM, "initial weights": training.STREAM_INIT,
    "training noise": training.STREAM_NOISE, "batches": training.STREAM_BATCHES,
    "monitor noise": training.STREAM_MONITOR, "sweep sets": sweep.STREAM_TRAINSET,
    "sweep noise": sweep.STREAM_NOISE, "sweep networks": sweep.STREAM_NETS,
    "sweep held-out noise": sweep.STREAM_HELD_NOISE,
}


def test_every_use_has_its_own_stream():
    assert len(set(STREAMS.values())) == len(STREAMS), STREAMS


def test_reserved_seeds_alias_no_stream_in_use():
    for seed in (CALIBRATION_SEED, training.TRAIN_DATA_SEED, training.MONITOR_SEED):
        low, high = seed % 2**32, seed >> 32
        assert derived_seed(seed, 0, 0) == derived_seed(low, high, 0)  # the aliasing
        assert high not in STREAMS.values(), (seed, high)
