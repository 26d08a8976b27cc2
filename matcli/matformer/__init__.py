"""MatFormer: nested-FFN submodels (Mix'n'Match) cut out of one checkpoint."""

from __future__ import annotations

from matcli.matformer.plan import plan_extract, plan_reorder

__all__ = ["plan_extract", "plan_reorder"]
