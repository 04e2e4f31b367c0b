"""What the YAML says: matrix, host and target files, loaded and checked."""
