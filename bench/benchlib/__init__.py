"""What the benchmark sections share; see bench/bench.py --help for the layout."""
