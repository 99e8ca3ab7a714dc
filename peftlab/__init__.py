"""PEFT Lab's helper package: the reused, tested logic behind the notebooks.

Import modules, not names: `from peftlab import lora, nf4, viz`.
"""
import warnings

# transformers 5 deprecation notices raised inside peft/transformers internals are noise in a
# lesson (the learner cannot act on them); real warnings still show.
warnings.filterwarnings("ignore", message=r".*is_gradient_checkpointing.*deprecated", category=FutureWarning)

__version__ = "0.1.0"
