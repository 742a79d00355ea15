"""Results -> tables and pictures: pandas and matplotlib over plain arrays and dicts."""
