"""reconet's domain library: plain Python, NumPy and PyTorch. Nothing here imports Dagster."""
