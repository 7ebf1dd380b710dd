"""fa3c: FlashAttention-3 forward attention in C, with FA3's Python interface.

    from fa3c.flash_attn_interface import flash_attn_with_kvcache   # FA3's names and signatures

The shared library is found through $FA3C_LIBRARY, else the copy installed in this package, else
the repository's build*/ directories; it is loaded on first use.
"""

from ._context import Context, default_context
from ._lib import DeviceType, DType, Fa3cError, Status, backends, library_path, version
from .flash_attn_interface import (
    flash_attn_combine,
    flash_attn_func,
    flash_attn_qkvpacked_func,
    flash_attn_varlen_func,
    flash_attn_with_kvcache,
    get_scheduler_metadata,
)

__version__ = "0.1.0"

__all__ = [
    "Context",
    "DType",
    "DeviceType",
    "Fa3cError",
    "Status",
    "backends",
    "default_context",
    "flash_attn_combine",
    "flash_attn_func",
    "flash_attn_qkvpacked_func",
    "flash_attn_varlen_func",
    "flash_attn_with_kvcache",
    "get_scheduler_metadata",
    "library_path",
    "version",
]
