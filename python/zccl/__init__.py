"""zccl: collective communication for sequence-parallel training.

* `zccl.Communicator`: zccl's own API over CPU tensors and numpy arrays
  (collectives, point-to-point, ring shift / ring pass, TokenRing, All-Scan),
  zero-copy, GIL released while waiting.
* `import zccl.torch` registers the `"zccl"` backend of `torch.distributed`:
  `dist.init_process_group("zccl")`.
* `zccl.attn_merge`: FlashAttention-2's log-sum-exp merge of attention blocks.

See docs/trainer-guide.md in the zccl repository.
"""

from ._core import Communicator, Root, Work, ZcclError, attn_merge
from ._zccl import __version__

__all__ = ["Communicator", "Root", "Work", "ZcclError", "attn_merge", "__version__"]
