"""What the runs show, as values: comparisons between rows (`experiments.rows`) and the verdicts
RESULTS.md tabulates. Each function returns dataclasses; `experiments.results` renders them and
docs/experiments-log.md interprets them.
"""
import json
from dataclasses import dataclass

from cosinegate.experiments import rows as R
from cosinegate.experiments.stats import McNemar, mcnemar, mcnemar_pooled, unpaired_noise

BAR_ACCURACY = R.PAPER["balanced"]["acc"]  # the paper's Balanced ResNet-20: 91.3 %
BAR_MACS = 0.70                           # at no more than 0.70 of plain ResNet-20's executed MACs


@dataclass(frozen=True)
class Comparison:
    """Model against reference, int8, with the paired test where both kept per-image results."""
    model: str
    reference: str
    relation: str              # why these two are compared: "baseline", "control", "sweep"
    model_accuracy: float
    reference_accuracy: float
    noise: float               # unpaired 95 % half-width of the difference
    paired: McNemar | None

    @property
    def gap(self) -> float:
        return self.model_accuracy - self.reference_accuracy


def _compare(row: dict, reference: dict, relation: str) -> Comparison:
    """The deployed exports of two rows, on their own int8 benches."""
    ours, theirs = R.deployed(row), R.deployed(reference)
    a, b = R.deployed_correct(row), R.deployed_correct(reference)
    return Comparison(row["name"], reference["name"], relation, ours.accuracy, theirs.accuracy,
                      unpaired_noise(ours.accuracy, R.int8(row)["images"], theirs.accuracy,
                                     R.int8(reference)["images"]),
                      mcnemar(a, b) if a and b and len(a) == len(b) else None)


def _baseline(rows: list[dict], row: dict) -> Comparison | None:
    """The row against plain ResNet-20: the run it warm-started from, else the same schedule."""
    base = R.plain_resnet20(rows, row)
    return _compare(row, base, "baseline") if base else None


@dataclass(frozen=True)
class BarVerdict:
    """A deployed Balanced ResNet-20 against the bar (int8 >= 91.3 % at <= 0.70 executed MACs)."""
    run: str
    schedule: str
    exported: str | None
    changed: dict              # {key: (run's value, preset's value)} where the objective departs
    deployed: R.Deployed
    images: int
    baseline: Comparison | None  # plain ResNet-20: the run's source, else the same schedule

    @property
    def accurate(self) -> bool:
        return self.deployed.accuracy >= BAR_ACCURACY

    @property
    def cheap(self) -> bool:
        return self.deployed.macs <= BAR_MACS

    @property
    def met(self) -> bool:
        return self.accurate and self.cheap


def bar_verdicts(rows: list[dict]) -> list[BarVerdict]:
    """Every deployed Balanced ResNet-20 (the paper's claim is for ResNet-20; deeper nets are
    `deeper_verdicts`)."""
    return [BarVerdict(r["name"], R.schedule(r["config"], r["epochs_done"]), R.exported(r),
                       R.changed_from_preset(r["config"]), R.deployed(r), R.int8(r)["images"], _baseline(rows, r))
            for r in rows if r["preset"] == "balanced" and r["config"]["depth"] == 20 and R.int8(r)]


@dataclass(frozen=True)
class DeeperVerdict:
    """A gated net deeper than ResNet-20 against plain ResNet-20, at no more executed MACs."""
    run: str
    depth: int
    schedule: str
    deployed: R.Deployed
    baseline: Comparison | None  # plain ResNet-20: the run's source, else the same schedule
    control: Comparison | None   # plain ResNet-20 fine-tuned from the same source as long

    @property
    def outcome(self) -> str | None:
        """'more compute', 'more accurate', 'less accurate' or 'no difference'; None without a baseline."""
        base = self.baseline
        if base is None:
            return None
        if self.deployed.macs > 1.0:
            return "more compute"
        if base.paired:
            if not base.paired.significant:
                return "no difference"
            return "more accurate" if base.paired.only_a > base.paired.only_b else "less accurate"
        if abs(base.gap) <= base.noise:
            return "no difference"
        return "more accurate" if base.gap > 0 else "less accurate"

    @property
    def goal_met(self) -> bool | None:
        """More accurate than plain ResNet-20 at no more compute, beyond the noise."""
        return None if self.outcome is None else self.outcome == "more accurate"


def deeper_verdicts(rows: list[dict]) -> list[DeeperVerdict]:
    def control(r):
        fine_tuned = R.fine_tuned_control(rows, r)
        return _compare(r, fine_tuned, "control") if fine_tuned else None

    return [DeeperVerdict(r["name"], r["config"]["depth"], R.schedule(r["config"], r["epochs_done"]),
                          R.deployed(r), _baseline(rows, r), control(r))
            for r in rows if r["config"]["gated"] and r["config"]["depth"] > 20 and R.int8(r)]


@dataclass(frozen=True)
class PaperComparison:
    """A run that trains a preset's losses on a ResNet-20, beside the paper's Table 2 row."""
    run: str
    preset: str
    training: str              # '10 ep', '160 + 12 ep (warm start)'
    paper_accuracy: float
    paper_flops: float         # the paper's mean relaxed gate
    tau_target: float
    gbar: float                # ours, last epoch
    macs: float | None         # executed MACs / plain ResNet-20 (int8 bench, else float run)
    accuracy: float | None     # deployed int8
    plain_accuracy: float | None  # plain ResNet-20 int8: the run's source, else the same schedule
    peak_epoch: int
    peak_accuracy: float       # deploy gate, float
    last_accuracy: float
    epochs_done: int
    distinct_paths: int | None
    adaptivity: float | None

    @property
    def gap_to_plain(self) -> float | None:
        return None if self.accuracy is None or self.plain_accuracy is None else self.accuracy - self.plain_accuracy

    @property
    def executes_every_block(self) -> bool:
        """A mean relaxed gate that counts compute saved while the hard gate skips nothing."""
        return self.gbar < 0.95 and (self.macs or 0) >= 0.9995


def paper_comparisons(rows: list[dict]) -> list[PaperComparison]:
    out = []
    for r in (r for r in rows if r["config"]["gated"] and R.paper_key(r)):
        source, base, last = R.source_row(r, rows), R.plain_resnet20(rows, r), r["last"]
        training = (f"{source['epochs_done']} + {r['epochs_done']} ep (warm start)" if source
                    else f"{r['epochs_done']} ep")
        paper = R.PAPER[R.paper_key(r)]
        out.append(PaperComparison(
            r["name"], r["preset"], training, paper["acc"], paper["flops"], r["config"]["tau_target"],
            last["gbar"], R.macs(r), R.deployed(r).accuracy if R.int8(r) else None,
            R.int8(base)["accuracy"] if base and R.int8(r) else None, r["peak"]["epoch"],
            R.test_acc(r["peak"]), R.test_acc(last), r["epochs_done"], last.get("distinct_paths_deploy"),
            last.get("adaptivity_deploy")))
    return out


@dataclass(frozen=True)
class StaticTwin:
    """A gated run and its static twin (NAME_static: the most-skipped blocks deleted, no gates)."""
    gated: str
    static: str
    removed_blocks: str
    adaptivity: float
    distinct_paths: int
    gated_accuracy: float      # float, deploy gate, all test images
    gated_macs: float
    static_accuracy: float
    static_macs: float
    schedule: str


def static_twins(rows: list[dict]) -> list[StaticTwin]:
    by_name = {r["name"]: r for r in rows}
    out = []
    for static in (r for r in rows if r["name"].endswith("_static")):
        gated = by_name.get(static["name"][: -len("_static")])
        if gated is None:
            continue
        g, s = gated["last"], static["last"]
        out.append(StaticTwin(gated["name"], static["name"], static["config"]["removed_blocks"],
                              g["adaptivity_deploy"], g["distinct_paths_deploy"], g["test_acc_deploy"],
                              g["mac_ratio_deploy"] * R.vs_resnet20(gated["config"]), s["test_acc_full"],
                              s["mac_ratio_deploy"] * R.vs_resnet20(static["config"]),
                              R.schedule(static["config"], static["epochs_done"])))
    return out


@dataclass(frozen=True)
class FrontierPoint:
    """A routed run (gates or early exits) against the static networks of its depth, schedule and `rows.budget` that bracket its executed
    MACs, interpolated linearly (float accuracy, all test images)."""
    run: str
    adaptivity: float
    accuracy: float
    macs: float
    below: tuple[str, float, float]   # (static run, accuracy, MACs) at or below the run's MACs
    above: tuple[str, float, float]   # the most accurate static run at the next MACs above
    static_accuracy: float            # interpolated at the run's MACs

    @property
    def gap(self) -> float:
        return self.accuracy - self.static_accuracy


def static_frontier(rows: list[dict]) -> list[FrontierPoint]:
    def key(r):
        c = r["config"]
        return c["dataset"], c["depth"], c["warmup_epochs"], r["epochs_done"], R.budget(r, rows)

    out = []
    for gated in (r for r in rows if R.routed(r)):
        g = gated["last"]
        scale = R.vs_resnet20(gated["config"])  # common to the same-depth networks compared here
        run_macs = g["mac_ratio_deploy"] * scale
        statics = sorted((r["last"]["mac_ratio_deploy"] * scale, r["last"]["test_acc_full"], r["name"]) for r in rows
                         if not R.routed(r) and key(r) == key(gated))
        below = [t for t in statics if t[0] <= run_macs]
        above = [t for t in statics if t[0] > run_macs]
        if not (below and above):
            continue
        (m0, a0, n0) = below[-1]
        (m1, a1, n1) = max((t for t in above if t[0] == above[0][0]), key=lambda t: t[1])
        out.append(FrontierPoint(gated["name"], g["adaptivity_deploy"], g["test_acc_deploy"], run_macs,
                                 (n0, a0, m0), (n1, a1, m1), a0 + (a1 - a0) * (run_macs - m0) / (m1 - m0)))
    return out


@dataclass(frozen=True)
class SweepPoint:
    """One threshold of `bench.sweep` (int8, TFLite interpreter) against the reference nearest in MACs."""
    run: str
    point: str                 # 'paper' (θ 0.45) or the target MAC ratio asked for
    threshold: float
    accuracy: float
    macs: float
    mac_std: float
    adaptivity: float
    distinct_paths: int
    reference: Comparison | None


# Static networks this close in MACs count as equally near (deleting different blocks of equal cost
# leaves MAC ratios that differ in the fourth decimal).
EQUAL_MACS = 0.005


def nearest_reference(references: dict[str, dict], mac_ratio: float) -> tuple[str, dict] | None:
    """The static network nearest in MACs; of those equally near, the most accurate."""
    if not references:
        return None
    distance = {name: abs(ref["mac_ratio"] - mac_ratio) for name, ref in references.items()}
    closest = min(distance.values())
    near = [(name, ref) for name, ref in references.items() if distance[name] <= closest + EQUAL_MACS]
    return max(near, key=lambda item: item[1]["accuracy"])


def sweep_points(rows: list[dict]) -> list[SweepPoint]:
    by_name = {r["name"]: r for r in rows}
    out = []
    for r in (r for r in rows if r["sweep"]):
        sweep, scale = r["sweep"], R.vs_resnet20(r["config"])
        references = R.static_references(r, rows)
        for point, p in sweep["points"].items():
            nearest = nearest_reference(references, p["mac_ratio"] * scale)
            reference = None
            if nearest:
                name, ref = nearest
                theirs = R.deployed_correct(by_name[name]) if name in by_name else None
                reference = Comparison(
                    f"{r['name']} ({point})", name, "sweep", p["accuracy"], ref["accuracy"],
                    unpaired_noise(p["accuracy"], p["images"], ref["accuracy"], ref["images"]),
                    mcnemar(p["correct"], theirs) if theirs and len(theirs) == len(p["correct"]) else None)
            out.append(SweepPoint(r["name"], point, p["threshold"]["threshold"], p["accuracy"],
                                  p["mac_ratio"] * scale, p["mac_ratio_std"] * scale, p["adaptivity"],
                                  p["distinct_paths"], reference))
    return out


def seed_groups(rows: list[dict]) -> list[list[dict]]:
    """Runs that differ only in their seeds (and the machines they ran on), theirs and those of the
    runs they warm-started from (`rows.lineage`), each group sorted by seed; groups of two or more."""
    from cosinegate.train.config import MACHINE_KEYS

    def recipe(r):
        chain = [({k: v for k, v in x["config"].items() if k not in ("seed", "init_from", *MACHINE_KEYS)},
                  x["epochs_done"]) for x in R.lineage(r, rows)]
        return json.dumps([R.first_start(r, rows), chain], sort_keys=True, default=str)

    groups: dict[str, list[dict]] = {}
    for r in rows:
        groups.setdefault(recipe(r), []).append(r)
    return [sorted(g, key=lambda r: r["config"]["seed"]) for g in groups.values() if len(g) > 1]


@dataclass(frozen=True)
class SeedPoint:
    """One sweep target of a routed recipe trained with several seeds, where the static network
    nearest in mean executed MACs (same recipe) was trained with the same seeds: each seed's model
    faces the static network of its own seed, and the paired test pools the seeds."""
    runs: tuple[str, ...]
    point: str
    seeds: tuple[int, ...]
    accuracies: tuple[float, ...]
    macs: tuple[float, ...]
    references: tuple[str, ...]
    reference_accuracies: tuple[float, ...]
    reference_macs: tuple[float, ...]
    paired: McNemar | None

    @property
    def gap(self) -> float:
        return (sum(self.accuracies) - sum(self.reference_accuracies)) / len(self.seeds)


def seed_points(rows: list[dict]) -> list[SeedPoint]:
    groups = seed_groups(rows)
    out = []
    for group in (g for g in groups if R.routed(g[0]) and all(r["sweep"] for r in g)):
        seeds = tuple(r["config"]["seed"] for r in group)
        same_recipe = R.static_references(group[0], rows)
        statics = {g[0]["name"]: g for g in groups if not R.routed(g[0]) and g[0]["name"] in same_recipe
                   and tuple(r["config"]["seed"] for r in g) == seeds and all(R.int8(r) for r in g)}
        if not statics:
            continue
        # every same-recipe static network, those trained with these seeds as their mean
        seeded = {r["name"] for g in statics.values() for r in g}
        means = {name: ref for name, ref in same_recipe.items() if name not in seeded}
        means.update({name: {"mac_ratio": sum(R.deployed(r).macs for r in g) / len(g),
                             "accuracy": sum(R.deployed(r).accuracy for r in g) / len(g)}
                      for name, g in statics.items()})
        scale = R.vs_resnet20(group[0]["config"])
        common = [k for k in group[0]["sweep"]["points"] if all(k in r["sweep"]["points"] for r in group)]
        for point in common:
            ours = [r["sweep"]["points"][point] for r in group]
            name, _ = nearest_reference(means, sum(p["mac_ratio"] for p in ours) * scale / len(ours))
            if name not in statics:  # the nearest static network has one seed only
                continue
            theirs = statics[name]
            pairs = [(p["correct"], R.deployed_correct(s)) for p, s in zip(ours, theirs)]
            paired = (mcnemar_pooled([mcnemar(a, b) for a, b in pairs])
                      if all(a and b and len(a) == len(b) for a, b in pairs) else None)
            out.append(SeedPoint(tuple(r["name"] for r in group), point, seeds, tuple(p["accuracy"] for p in ours),
                                 tuple(p["mac_ratio"] * scale for p in ours), tuple(r["name"] for r in theirs),
                                 tuple(R.deployed(r).accuracy for r in theirs), tuple(R.deployed(r).macs for r in theirs),
                                 paired))
    return out
