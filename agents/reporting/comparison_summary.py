"""The comparison at matched compute, in numbers: per method and budget, mean test loss and the
paired difference against the policy; the share of the largest Optuna search's gain each method
captures; the smallest Optuna budget that matches the policy; a per-instance table."""
from __future__ import annotations

import dataclasses
import math

from agents.reporting.records import PairResult
from agents.reporting.statistics import (HIERARCHICAL_METHOD, hierarchical_bootstrap_mean, instance_level_intervals,
                                         mean_ci95, performance_profile, probability_of_improvement,
                                         stratified_bootstrap_iqm)

REFERENCE_SEARCH = "optuna_tpe"  # search_gain_captured's 1.0: its largest budget's selected run


def score_failed_runs(pairs: list[PairResult]) -> tuple[list[PairResult], list[dict]]:
    """A selected run without a finite test loss (a PBT population none of whose members finished)
    is scored as the environment scores a diverged run: no better than the base model. Returns the
    rescored pairs (copies; the input is untouched) and what was rescored."""
    out, rescored = [], []
    for p in pairs:
        results = {m: dict(by_b) for m, by_b in p.results.items()}
        for m, by_b in results.items():
            for b, x in by_b.items():
                if not math.isfinite(x.test_loss):
                    by_b[b] = dataclasses.replace(x, test_loss=p.base_test_loss)
                    rescored.append({"instance": p.instance, "seed": p.seed, "method": m, "budget": b})
        out.append(PairResult(p.instance, p.seed, results))
    return out, rescored


def per_instance_table(pairs: list[PairResult]) -> dict[str, dict]:
    """Instance -> method@budget -> mean test loss and task metric (exact match, where the instance
    has one) over its seeds: what a user reads beside the aggregate."""
    out: dict[str, dict] = {}
    for p in pairs:
        row = out.setdefault(p.instance, {"metric_name": (p.one_run("policy").log or {}).get("metric_name"), "methods": {}})
        for m, by_b in p.results.items():
            for b, x in by_b.items():
                cell = row["methods"].setdefault(f"{m}@{b}", {"test_loss": [], "test_metric": []})
                cell["test_loss"].append(x.test_loss)
                if x.test_metric is not None:
                    cell["test_metric"].append(x.test_metric)
    for row in out.values():
        for cell in row["methods"].values():
            cell["n_seeds"], cell["n_metric"] = len(cell["test_loss"]), len(cell["test_metric"])
            cell["test_loss"] = sum(cell["test_loss"]) / len(cell["test_loss"])
            cell["test_metric"] = sum(cell["test_metric"]) / len(cell["test_metric"]) if cell["test_metric"] else None
    return out


def summarise_comparison(pairs: list[PairResult], budgets: list[int]) -> dict:
    """Per method and budget: mean test loss with a 95% interval over instance x seed runs, the
    paired difference to the policy at the instance level, the search gain captured per instance
    and aggregated, and the smallest Optuna budget that matches the policy's single run on it
    (computed, never assumed)."""
    pairs, rescored = score_failed_runs(pairs)
    methods: dict[str, dict] = {}
    for m, by_budget in pairs[0].results.items():
        for b in sorted(by_budget):
            rows = [p.results[m][b] for p in pairs]
            mean, ci = mean_ci95([x.test_loss for x in rows])
            # paired on instance and seed: the instances' spread cancels out. Seeds share an instance,
            # so the interval resamples instances, then seeds within them
            per_inst: dict[str, list[float]] = {}
            diffs: dict[str, list[float]] = {}
            for p, x in zip(pairs, rows):
                per_inst.setdefault(p.instance, []).append(x.test_loss)
                diffs.setdefault(p.instance, []).append(p.one_run("policy").test_loss - x.test_loss)
            paired = instance_level_intervals(diffs)
            methods.setdefault(m, {})[str(b)] = {
                "compute_steps": sum(x.compute_steps for x in rows) / len(rows),
                "test_loss_mean": mean, "test_loss_ci95": ci, "n_runs": len(rows),
                **{f"policy_minus_this_{k}": v for k, v in paired.items()},
                "per_instance": {k: sum(v) / len(v) for k, v in per_inst.items()},
            }
    gain = search_gain_captured(pairs)
    # on the headline score, so that no one kind of task (loss 1 or loss 6) decides it
    policy_gain = gain["by_method"]["policy"]["1"]["iqm"]
    match = next((b for b in sorted(budgets)
                  if gain["by_method"][REFERENCE_SEARCH][str(b)]["iqm"] >= policy_gain), None)
    runs = [{"instance": p.instance, "seed": p.seed, "method": m, "budget": b,
             "compute_steps": x.compute_steps, "test_loss": x.test_loss}
            for p in pairs for m, by_budget in p.results.items() for b, x in sorted(by_budget.items())]
    poi = {m: {b: dict(zip(("p", "ci95_low", "ci95_high"), probability_of_improvement(
                   _losses(pairs, "policy", 1), _losses(pairs, m, int(b)))))
               for b in by_b} for m, by_b in methods.items() if m != "policy"}
    return {"methods": methods, "optuna_budget_to_match_policy": match, "search_gain_captured": gain["by_method"],
            "probability_policy_better": poi,
            "probability_policy_better_method": ("rliable's probability of improvement on test loss: per instance "
                                                 "the share of (policy run, method run) pairs where the policy's loss "
                                                 "is lower (ties half), averaged over instances; 95% interval from "
                                                 "2,000 stratified bootstrap resamples (runs within each instance)"),
            "performance_profile": performance_profiles(gain["scores"]),
            "search_gain_reference": gain["reference"], "search_gain_interval": gain["interval"],
            "search_gain_instances_left_out": gain["instances_without_gain"],
            "search_gain_loss": gain["search_gain_loss"],
            "per_instance": per_instance_table(pairs), "failed_runs_scored_as_base_model": rescored,
            "pbt_errored_members": pbt_errored_members(pairs), "runs": runs}


def _losses(pairs: list[PairResult], method: str, budget: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for p in pairs:
        out.setdefault(p.instance, []).append(p.results[method][budget].test_loss)
    return out


PROFILE_TAUS = tuple(round(-0.5 + 0.05 * i, 2) for i in range(41))  # -0.5 .. 1.5 on the search-gain scale


def performance_profiles(scores: dict[str, dict[str, list[float]]]) -> dict:
    """rliable's performance profile of each method and budget over the search-gain scores of its
    runs (instances x seeds pooled; 0 = default recipe, 1 = the reference search)."""
    return {"taus": list(PROFILE_TAUS),
            "by_method": {m: {b: performance_profile(s, PROFILE_TAUS) for b, s in by_b.items()}
                          for m, by_b in scores.items()}}


def pbt_errored_members(pairs: list[PairResult]) -> list[dict]:
    """PBT populations with members that errored (their selection was among the members that ran),
    and those saved before the count existed (``errored`` None: not recorded, not zero)."""
    return [{"instance": p.instance, "seed": p.seed, "population": int(n), "errored": x.errored_members}
            for p in pairs for n, x in sorted(p.results.get("pbt", {}).items())
            if x.errored_members is None or x.errored_members > 0]


def search_gain_captured(pairs: list[PairResult]) -> dict:
    """Per method and budget, how much of the largest Optuna search's gain over the default recipe
    it gets: (loss_default_recipe - loss_method) / (loss_default_recipe - loss_Optuna_best), test
    split. 0 = no better than the default recipe, 1 = as good as the search. Per instance the
    denominator is the mean over its seeds (one noisy seed cannot blow the ratio up), so the
    per-instance value is the ratio of the seed-averaged gains. Aggregated over instances x seeds
    with the IQM and a stratified bootstrap (seeds resampled within each instance)."""
    ref_b = sorted(pairs[0].results[REFERENCE_SEARCH])[-1]
    by_inst: dict[str, list[PairResult]] = {}
    for p in pairs:
        by_inst.setdefault(p.instance, []).append(p)
    default = lambda p: p.one_run("default_recipe").test_loss  # noqa: E731
    denom = {i: sum(default(p) - p.results[REFERENCE_SEARCH][ref_b].test_loss for p in ps) / len(ps)
             for i, ps in by_inst.items()}
    default_loss = {i: sum(default(p) for p in ps) / len(ps) for i, ps in by_inst.items()}
    out: dict[str, dict] = {}
    scores: dict[str, dict[str, list[float]]] = {}
    for m, by_budget in pairs[0].results.items():
        for b in sorted(by_budget):
            per_instance = {i: [(default(p) - p.results[m][b].test_loss) / denom[i] for p in ps]
                            for i, ps in by_inst.items()
                            if denom[i] > 1e-9}  # else the search was no better than the default recipe: no gain
            scores.setdefault(m, {})[str(b)] = [x for v in per_instance.values() for x in v]
            point, lo, hi = stratified_bootstrap_iqm(per_instance) if per_instance else (math.nan,) * 3
            mean, mlo, mhi = hierarchical_bootstrap_mean(per_instance) if per_instance else (math.nan,) * 3
            out.setdefault(m, {})[str(b)] = {"iqm": point, "ci95_low": lo, "ci95_high": hi,
                                             "mean_over_instances": mean, "mean_ci95_low": mlo, "mean_ci95_high": mhi,
                                             "per_instance": {i: sum(v) / len(v) for i, v in per_instance.items()}}
    return {"by_method": out, "reference": f"{REFERENCE_SEARCH} best of {ref_b}", "scores": scores,
            "interval": "IQM over instances x seeds; 95% percentile interval from 5,000 stratified bootstrap "
                        "resamples (seeds within each instance; the instances and each instance's denominator are "
                        "held fixed, so the interval is narrower than one that also resampled the search's gain); "
                        "beside it, mean_over_instances: " + HIERARCHICAL_METHOD.format(reps="10,000"),
            "instances_without_gain": sorted(i for i, d in denom.items() if not d > 1e-9),
            # the denominators: where the search gained little, a small loss difference is a large score
            "search_gain_loss": {i: {"default_recipe_minus_search": d, "relative_to_default_recipe": d / default_loss[i]}
                                 for i, d in denom.items()}}
