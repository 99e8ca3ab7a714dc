"""Exercise checkers: each notebook's "write it yourself" cells call one of these.

    check_<what>(fn) -> bool      runs the learner's `fn` on fixed small inputs, prints
                                  "✓ correct: …" or "✗ <what is wrong and how to fix it>"; never raises

A checker compares with the reference in peftlab and, when the answer is wrong, names the typical
mistake it matches (the wrong axis, a missing scaling factor, a transposed shape, an off-by-one
block, …) rather than only "values differ". A stub that still raises NotImplementedError gets
"not solved yet". One module per notebook, the shared verdict in `_verdict`.

Solutions live in one place, outside the notebooks and outside this package:
notebooks/solutions/NN_<notebook>.py. With PEFTLAB_SOLUTIONS=1 (the test suite's notebook runs)
every checker checks that file's solution instead of the learner's function, and says so.
"""
from ._verdict import SOLUTIONS_ENV, solutions_on  # noqa: F401
from .dora import check_dora_merge, check_weight_norm  # noqa: F401  (notebook 03)
from .lora import check_forward, check_low_rank, check_merge  # noqa: F401  (notebook 01)
from .nf4 import check_block_absmax, check_constant_bits, check_nf4_levels  # noqa: F401  (notebook 02)
from .qlora import check_collate, check_t4_configs  # noqa: F401  (notebook 04)
from .showdown import check_c14_verdict, check_summary  # noqa: F401  (notebook 06)
from .vram import check_lora_terms, check_qlora_weights  # noqa: F401  (notebook 05)
