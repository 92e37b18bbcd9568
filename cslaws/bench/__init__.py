"""Training, data, results store and the `bench` command line."""
