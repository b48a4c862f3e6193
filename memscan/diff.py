"""Compare two reports of the same dataset, matched by sample path.

A *suspect* is a sample whose ``category`` is in the watched set (default: ``mislabeled``). The
comparison answers what a reviewer of a data change asks: which suspects are new, which were
resolved (no longer flagged, or the sample was removed), which samples had their label changed,
and which samples were added or removed. ``memscan check --baseline`` gates on ``new_suspects``.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from .errors import ReportError, check_choice
from .files import records
from .report import frame_and_name
from .scores import CATEGORIES

SAMPLE_FIELDS = ("path", "label_name", "pred_name", "p_pred", "mislabel_score", "category")


@dataclass
class ReportDiff:
    old: str
    new: str
    watched: tuple[str, ...]
    old_samples: int
    new_samples: int
    old_suspects: int
    new_suspect_count: int
    new_suspects: list[dict] = field(default_factory=list)       # flagged now, not before (incl. added samples)
    resolved_suspects: list[dict] = field(default_factory=list)  # flagged before, not now (incl. removed samples)
    relabelled: list[dict] = field(default_factory=list)         # in both, given label changed
    added: list[str] = field(default_factory=list)               # paths only in the new report
    removed: list[str] = field(default_factory=list)             # paths only in the old report

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__} | {"watched": list(self.watched)}

    def counts(self) -> dict:
        return {"new_suspects": len(self.new_suspects), "resolved_suspects": len(self.resolved_suspects),
                "relabelled": len(self.relabelled), "added": len(self.added), "removed": len(self.removed),
                "old_suspects": self.old_suspects, "suspects": self.new_suspect_count}


def diff_reports(old, new, /, *, watch=("mislabeled",), new_name: str | None = None) -> ReportDiff:
    """``old``/``new``: run folders, report.parquet paths or report DataFrames (``new_name`` names a
    DataFrame ``new`` in messages).

    Lists are sorted most suspicious first (by the newer report's mislabel_score where the sample
    is in it). Raises ``ReportError`` when the reports share no sample path (not the same dataset).
    """
    watch = tuple([watch] if isinstance(watch, str) else watch)
    for w in watch:
        check_choice("watched category", w, CATEGORIES)
    od, oname = frame_and_name(old, SAMPLE_FIELDS)
    nd, nname = frame_and_name(new, SAMPLE_FIELDS)
    nname = new_name or nname
    for df, name in ((od, oname), (nd, nname)):
        if df["path"].duplicated().any():
            dup = df["path"][df["path"].duplicated()].iloc[0]
            raise ReportError(f"'{name}' lists path '{dup}' twice; reports are matched by path")
    o = od.set_index("path", drop=False)
    n = nd.set_index("path", drop=False)
    common = n.index.intersection(o.index)
    if len(common) == 0 and len(o) and len(n):
        raise ReportError(f"'{oname}' and '{nname}' share no sample path: they are not reports of the same "
                          "dataset (paths are relative to the dataset root; compare runs of the same folder)")
    o_sus = o["category"].isin(watch)
    n_sus = n["category"].isin(watch)
    was = o["category"].reindex(n.index)                   # NaN where the sample is new
    new_mask = n_sus & ~was.isin(watch)
    now = n["category"].reindex(o.index)
    res_mask = o_sus & ~now.isin(watch)
    in_both = n.index.isin(o.index)
    relab_mask = in_both & (n["label_name"] != o["label_name"].reindex(n.index)).to_numpy()

    def rows(df, **cols):
        return records(df[list(SAMPLE_FIELDS)].assign(**cols).sort_values("mislabel_score", ascending=False,
                                                                          kind="stable"))

    new_s = rows(n[new_mask], was=was[new_mask].astype(object))
    # a resolved suspect is shown as it is now; one whose sample was removed, as it was
    res_now = n.loc[o.index[(res_mask & o.index.isin(n.index)).to_numpy()]]
    res_gone = o[res_mask & ~o.index.isin(n.index)]
    res_s = rows(res_now, was=o.loc[res_now.index, "category"], removed=False) + \
        rows(res_gone, was=res_gone["category"], removed=True)
    res_s.sort(key=lambda r: -r["mislabel_score"])
    rel = n[relab_mask]
    rel_s = rows(rel, old_label=o.loc[rel.index, "label_name"])
    return ReportDiff(
        old=oname, new=nname, watched=watch, old_samples=len(o), new_samples=len(n),
        old_suspects=int(o_sus.sum()), new_suspect_count=int(n_sus.sum()),
        new_suspects=new_s, resolved_suspects=res_s, relabelled=rel_s,
        added=sorted(set(n.index) - set(o.index)), removed=sorted(set(o.index) - set(n.index)))
