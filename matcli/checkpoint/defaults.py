"""Names and sizes shared by the checkpoint reader, the writer and the options: one
definition each."""

from __future__ import annotations

# transformers' default "5GB" shard size.
DEFAULT_MAX_SHARD_BYTES = 5_000_000_000
# Default size of one read: large enough for full disk throughput, small enough that a few
# chunks and their transforms stay well under the memory targets.
DEFAULT_CHUNK_BYTES = 32 * 1024 * 1024

# The index of a sharded checkpoint (transformers' name).
INDEX_NAME = "model.safetensors.index.json"
