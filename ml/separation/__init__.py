"""The separation stage: Spleeter's 2-stems model (the PyTorch port of its U-Net, the official
backend's protocol) and the stem cache. Importing the package imports no torch: the official
Spleeter worker, in its own environment, uses ``ml.separation.stems`` with numpy only."""
