"""The benchmark harness: mooltiproxy measured against a direct connection to the same upstream."""
