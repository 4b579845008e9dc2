"""Study definitions: presets and the cells they expand into."""
