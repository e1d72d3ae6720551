"""Real backends the tests run against, built from registry packages into a cache outside the clone."""
