"""Graph neural networks: one graph classifier with convolutional, attentional or message-passing layers."""

import warnings

with warnings.catch_warnings():
    # PyTorch Geometric 2.8 scripts a few helpers with torch.jit.script at import, which torch now deprecates.
    warnings.filterwarnings("ignore", ".*torch.jit.script.*", FutureWarning)
    import torch_geometric  # noqa: F401
