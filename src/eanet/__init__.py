"""eanet: External Attention (EANet) for image classification, in PyTorch.

>>> import eanet
>>> model = eanet.create_model("eanet_keras")          # the Keras example's EANet
>>> layer = eanet.ExternalAttention(64, num_heads=16)  # the module on its own
"""

from eanet.errors import DataError, EanetError
from eanet.hub import load_model
from eanet.layers import ExternalAttention, SelfAttention
from eanet.models import EANet, create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "DataError", "EANet", "EanetError", "ExternalAttention", "SelfAttention", "create_model", "list_models",
    "load_model", "__version__",
]
