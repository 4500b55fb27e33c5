"""results/REPORT.md and the README's headline block, written from the committed result files:
every number in them is read from a summary that a named command wrote, never typed in.

Each section names the command that produced its numbers, the machine and the wall time, as the
result file records them. A file that is missing leaves its section out and says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

from agents.reporting.statistics import sign_by_both_intervals

HEADLINE_COMPARISON = "compare/ppo-smollm2_cpu"
HEADLINE_CONTROLLER = "agents/ppo-smollm2_wide_anchored_probe_imitation"  # named before its evaluation (methodology)
MAIN_JOB = "main_job.json"  # written by scripts/time_main_job.sh


def _read(path: Path) -> Optional[dict]:
    return json.loads(path.read_text()) if path.is_file() else None


def _iv(lo: float, hi: float, fmt: str = "+.2f") -> str:
    return f"[{lo:{fmt}}, {hi:{fmt}}]"


def _machine(m: Optional[dict]) -> str:
    if not m:
        return "machine not recorded"
    gpu = m.get("cuda") or "no GPU"
    return f"{m.get('cpu_count')} CPUs, {gpu}, torch {m.get('torch')}, commit {m.get('git_commit')}"


def _minutes(seconds: Optional[float]) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "not recorded"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def comparison_facts(s: dict) -> dict[str, Any]:
    """What the headline says, computed from the comparison's summary."""
    gain = s["search_gain_captured"]
    policy = s["methods"]["policy"]["1"]
    tr = s["methods"].get("transferred_recipe", {}).get("1")
    per = {i: row["methods"] for i, row in s["per_instance"].items()}
    recipe_wins = (sum(1 for m in per.values() if m["transferred_recipe@1"]["test_loss"] < m["policy@1"]["test_loss"])
                   if tr else None)
    return {"n_instances": len(s["instances"]), "n_seeds": len(s["seeds"]),
            "policy_gain": gain["policy"]["1"], "recipe_gain": gain.get("transferred_recipe", {}).get("1"),
            "reference": s["search_gain_reference"], "budget_to_match": s["optuna_budget_to_match_policy"],
            "policy_minus_recipe": None if tr is None else {k: tr[f"policy_minus_this_{k}"] for k in
                                                            ("mean", "ci95_low", "ci95_high", "t95_low", "t95_high")},
            "recipe_wins": recipe_wins, "policy_steps": policy["compute_steps"]}


def headline(results: Path) -> str:
    """The README's headline paragraph, from the committed comparison."""
    s = _read(results / HEADLINE_COMPARISON / "summary.json")
    if s is None:
        return f"(no committed comparison: {HEADLINE_COMPARISON}/summary.json is missing)"
    f = comparison_facts(s)
    g, r = f["policy_gain"], f["recipe_gain"]
    lines = [f"On {f['n_instances']} held-out SmolLM2 instances x {f['n_seeds']} seeds, the learned controller's "
             f"single run captures **{g['iqm']:.2f}** {_iv(g['ci95_low'], g['ci95_high'])} of the gain over the default "
             f"recipe that a {f['reference'].replace('optuna_tpe best of ', '')}-run Optuna TPE search gets "
             "(IQM over instances x seeds, 95% stratified-bootstrap interval)."]
    if r is not None:
        d = f["policy_minus_recipe"]
        verdict = {1: "so **the controller's dynamics do not pay yet**", -1: "so the controller beats the recipe",
                   0: "and the intervals do not tell the two apart"}[
            sign_by_both_intervals(d["ci95_low"], d["ci95_high"], d["t95_low"], d["t95_high"])]
        lines.append(f"A static recipe tuned once on the training instances captures **{r['iqm']:.2f}** "
                     f"{_iv(r['ci95_low'], r['ci95_high'])}. Controller − recipe, paired test loss: {d['mean']:+.3f} "
                     f"(two-level bootstrap {_iv(d['ci95_low'], d['ci95_high'], '+.3f')}, t over instance means "
                     f"{_iv(d['t95_low'], d['t95_high'], '+.3f')}); the recipe is better on {f['recipe_wins']} of "
                     f"{f['n_instances']} instances, {verdict}.")
    lines.append(f"Numbers: `{s['command']}` ({_machine(s.get('machine'))}); every method and interval in "
                 "[results/REPORT.md](results/REPORT.md).")
    return "\n".join(lines)


def comparison_section(results: Path) -> list[str]:
    s = _read(results / HEADLINE_COMPARISON / "summary.json")
    if s is None:
        return ["## The comparison at matched compute", "", f"`{HEADLINE_COMPARISON}/summary.json` is missing.", ""]
    out = ["## The comparison at matched compute (`results/compare/ppo-smollm2_cpu/`)", "",
           f"Command: `{s['command']}`. Machine: {_machine(s.get('machine'))}. The summary was last written "
           f"{s.get('measured_at')} (that invocation: {_minutes(s.get('wall_seconds_this_invocation'))}, reading "
           "saved runs back where they existed).", "",
           f"{len(s['instances'])} held-out instances x {len(s['seeds'])} seeds, test split of the run each method "
           "selects by validation. Gain captured = (default recipe − method) / (default recipe − "
           f"{s['search_gain_reference']}), test loss: {s['search_gain_interval']}. Policy − method: paired test-loss "
           "difference, mean over instances, two-level bootstrap 95% interval and t interval over instance means "
           "(negative: the policy was better).", "",
           "| method | budget | training steps per instance | gain captured, IQM [95%] | policy − method [bootstrap]; t |",
           "|---|---|---|---|---|"]
    for m in s["methods"]:  # every method the comparison ran, in the registry's order
        for b, row in s["methods"][m].items():
            gn = s["search_gain_captured"][m][b]
            paired = "" if m == "policy" else (
                f"{row['policy_minus_this_mean']:+.3f} {_iv(row['policy_minus_this_ci95_low'], row['policy_minus_this_ci95_high'], '+.3f')}; "
                f"t {_iv(row['policy_minus_this_t95_low'], row['policy_minus_this_t95_high'], '+.3f')}")
            out.append(f"| {m} | {b} | {row['compute_steps']:.0f} | {gn['iqm']:+.2f} {_iv(gn['ci95_low'], gn['ci95_high'])} "
                       f"| {paired} |")
    out += ["", f"Smallest Optuna budget whose gain captured reaches the policy's: {s['optuna_budget_to_match_policy']}.",
            "", "Per instance, test loss (exact match where the task has one), mean over seeds:", "",
            "| instance | policy | transferred recipe | default recipe | Optuna TPE, largest budget | PBT |",
            "|---|---|---|---|---|---|"]
    top = max(s["methods"]["optuna_tpe"], key=int)
    pbt = max(s["methods"]["pbt"], key=int) if "pbt" in s["methods"] else None
    for inst, row in s["per_instance"].items():
        cells = [f"policy@1", "transferred_recipe@1", "default_recipe@1", f"optuna_tpe@{top}"] + (
            [f"pbt@{pbt}"] if pbt else [])
        shown = []
        for c in cells:
            x = row["methods"].get(c)
            shown.append("—" if x is None else f"{x['test_loss']:.3f}" + (
                f" ({x['test_metric']:.2f})" if x.get("test_metric") is not None else ""))
        out.append(f"| {inst} | " + " | ".join(shown + ([] if pbt else ["—"])) + " |")
    out += ["", "![gain against compute](compare/ppo-smollm2_cpu/gain_vs_compute.png)",
            "![the policy's lr paths](compare/ppo-smollm2_cpu/policy_lr_paths.png)", ""]
    return out


def heldout_section(results: Path) -> list[str]:
    out = ["## Held-out evaluations of the committed agents", "",
           "Each agent against the default recipe and against its own drawn start held (`held_start`), paired on "
           "instance and seed; mean over instances with a two-level bootstrap 95% interval, and a t interval over the "
           "instance means. lr_contraction = std(log final lr) / std(log start lr) over the held-out episodes "
           "(1: holds its start).", "",
           "| agent | command | lr_contraction | policy − held start | policy − default recipe | machine |",
           "|---|---|---|---|---|---|"]
    for f in sorted((results / "agents").glob("*/heldout.json")):
        s = json.loads(f.read_text())["summary"]
        cells = []
        for b in ("held_start", "default_recipe"):
            p = s["paired"].get(b)
            cells.append("—" if p is None else f"{p['mean']:+.3f} {_iv(p['ci95_low'], p['ci95_high'], '+.3f')}; "
                                               f"t {_iv(*p['t_ci95_over_instances'], '+.3f')}")
        lc = s.get("lr_contraction")
        out.append(f"| {f.parent.name} | `{s['command']}` | {'—' if lc is None else f'{lc:.3f}'} | {cells[0]} | "
                   f"{cells[1]} | {_machine(s.get('machine'))} |")
    out += ["", "How each agent was trained (its `agent.json`):", ""]
    for f in sorted((results / "agents").glob("*/agent.json")):
        a = json.loads(f.read_text())
        out.append(f"- {f.parent.name}: `{a.get('command', 'command not recorded')}`, "
                   f"{_minutes(a.get('training_seconds'))} of training.")
    return out + [""]


def headroom_section(results: Path) -> list[str]:
    out = ["## Headroom and the best constant learning rates", ""]
    h = _read(results / "headroom" / "smollm2_cpu.json")
    if h is not None:
        a = h["aggregate"]
        out += [f"Command: `{h['command']}` ({_machine(h.get('machine'))}; {_minutes(h.get('seconds_this_invocation'))} "
                "in its last invocation). Best open-loop schedule from the same drawn starts, chosen by validation:", ""]
        for ref in ("hold", "default_recipe"):
            x = a[f"best_open_loop_gain_over_{ref}"]
            out.append(f"- over {'holding the start' if ref == 'hold' else 'the default recipe'}: IQM gain "
                       f"{x['iqm']:+.1%} {_iv(x['ci95_low'], x['ci95_high'], '+.1%')} of the reference's test loss")
        out += [f"- the instances' best constant lr spans {a['best_constant_lr_spread']:.1f}x", "",
                "Per instance: [headroom/smollm2_cpu.md](headroom/smollm2_cpu.md).", ""]
    g = _read(results / "headroom" / "smollm2_cpu_lr_grid.json")
    if g is not None:
        out += [f"Command: `{g['command']}` ({_machine(g.get('machine'))}). Best constant lr per instance (refined):", "",
                "| instance | split | best lr |", "|---|---|---|"]
        out += [f"| {i} | {x['split']} | {x['best_lr_refined']:.1e} |" for i, x in g["instances"].items()]
        out += ["", f"Spread across instances: {g['spread_refined']:.1f}x.", ""]
    w = _read(results / "headroom" / "smollm2_wide.json")
    if w is not None:
        s, g = w["summary"], w["summary"]["transferred_recipe_gain_captured"]
        out += ["### The wide family: headroom over the recipe tuned once", "",
                f"Command: `{w['command']}` ({_machine(w.get('machine'))}; resumed across sessions, "
                f"{_minutes(w.get('seconds_this_invocation'))} in its last invocation). {s['n_train_instances']} "
                f"training and {s['n_heldout_instances']} held-out instances ({s['n_heldout_unseen_family']} from "
                "families no training instance uses), one seed:", "",
                f"- the held-out instances' best constant lr spans {s['best_constant_lr_spread_heldout']:.1f}x",
                f"- the transferred recipe captures {g['iqm']:.2f} {_iv(g['ci95_low'], g['ci95_high'], '.2f')} of "
                f"the gain of {s['search_reference']} over the default recipe (IQM over instances; 95% bootstrap "
                "over instances)",
                f"- held-out instances where that search gains under {s['separation_threshold']:.0%} of the "
                f"default recipe's loss: {', '.join(s['instances_below_separation']) or 'none'}", "",
                "Per instance: [headroom/smollm2_wide.md](headroom/smollm2_wide.md).", ""]
    return out


def benchmark_section(results: Path) -> list[str]:
    out = ["## Benchmarks", "",
           "Commands as each file recorded them (`trainers.bench` and `envs.bench` are now `trainers.bench_session` "
           "and `envs.bench_env`).", ""]
    b = _read(results / "bench.json")
    if b:
        out.append(f"- Environment overhead (`{b['command']}`, {_machine(b.get('machine'))}): env step / bare "
                   f"DeepSpeed step = {b['overhead_ratio']:.3f}; reset {b['reset_s'] * 1000:.1f} ms "
                   f"({b['reset_over_train_step']:.3f} of a step); one `deepspeed.initialize` per run "
                   f"({b['deepspeed_initialize_calls']}).")
    r = _read(results / "ray_parallel.json")
    if r:
        two = next(v for k, v in r.items() if k.endswith("_envs"))
        out.append(f"- Ray throughput (`{r['command']}`, {_machine(r.get('machine'))}): "
                   f"{r['one_env']['episodes_per_hour']:.0f} episodes/h with 1 actor, {two['episodes_per_hour']:.0f} "
                   f"with {two['n_envs']}: speedup {r['speedup']:.2f}.")
    for f in sorted(results.glob("bench_session_*.json")):
        s = json.loads(f.read_text())
        out.append(f"- Session step, {s.get('config')} / {s.get('instance')} (`{s['command']}`): bare step "
                   f"{s['train_step_s_raw']:.3f} s at {s['micro_batch_size']} x {s['seq_len']} tokens.")
    gpu = _read(results / "gpu.json")
    if gpu:
        out.append(f"- GPU ({gpu['device'].split(',')[0]}; `{gpu['command'].split('  ')[0]}`, {gpu['wall_s']:.0f} s): "
                   + " ".join(gpu["findings"][:2]))
    if (results / MAIN_JOB).is_file():
        out.append(f"- The main job: {main_job(results)}")
    return out + [""]


def report(results: Path) -> str:
    lines = ["# Results", "",
             "Written by `python -m agents.report` from the committed result files; every number below is read "
             "from one of them, and each section names the command that wrote it.", ""]
    lines += comparison_section(results) + heldout_section(results) + headroom_section(results) + benchmark_section(results)
    return "\n".join(lines).rstrip() + "\n"


def main_job(results: Path) -> str:
    """The README's line on the main job, from scripts/time_main_job.sh's record of a fresh clone."""
    job = _read(results / MAIN_JOB)
    if job is None:
        return f"(the main job's time is not measured yet: `bash scripts/time_main_job.sh` writes results/{MAIN_JOB})"
    lc = job.get("lr_contraction")
    if lc is not None and lc < 1:
        steer = (f"its controller steers: on the held-out instances its final lr spreads {lc:.2f}x as widely as "
                 "its drawn start (lr_contraction < 1)")
    else:
        steer = (f"its controller does not steer (lr_contraction {'undefined' if lc is None else f'{lc:.2f}'}, "
                 "not below 1): the job is a plumbing run")
    lo, hi = job.get("policy_minus_default_recipe_ci95") or (float("nan"), float("nan"))
    tlo, thi = job.get("policy_minus_default_recipe_t_ci95") or (float("nan"), float("nan"))
    return (f"`{job['command']}`, timed on {job.get('how', 'a fresh clone')} ({_machine(job.get('machine'))}; "
            f"{job.get('measured_at')}): **{_minutes(job['wall_seconds'])}** in all, "
            f"{_minutes(job.get('setup_seconds'))} of it setup. "
            f"In that run {steer}. Policy − default recipe, test loss per held-out instance: "
            f"{job.get('policy_minus_default_recipe', float('nan')):+.3f} (two-level bootstrap [{lo:+.3f}, {hi:+.3f}], "
            f"t over instance means [{tlo:+.3f}, {thi:+.3f}]; {job.get('n_instances', '?')} instances x "
            f"{job.get('n_seeds', '?')} seeds): {_separated(lo, hi, tlo, thi)}. The plot: "
            f"`{job.get('agent', 'results/agents/<name>')}/lr_final_vs_start.png`.")


def _separated(lo: float, hi: float, tlo: float, thi: float) -> str:
    if not all(math.isfinite(x) for x in (lo, hi, tlo, thi)):
        return "its intervals are not recorded"
    return {-1: "the policy is better by both intervals", 1: "the policy is worse by both intervals",
            0: "the two intervals do not agree, so the policy is not clearly better or worse"}[
        sign_by_both_intervals(lo, hi, tlo, thi)]


def _paired_text(d: Optional[dict], unit: str = "+.4f") -> str:
    if not d:
        return "not measured"
    if "ci95_low" not in d:
        return f"{d['mean']:{unit}} (one instance: no interval)"
    t = d["t_ci95_over_instances"]
    per = d.get("per_instance_mean") or {}
    count = f"; lower on {sum(v < 0 for v in per.values())} of {len(per)} instances" if per else ""
    return (f"{d['mean']:{unit}} (two-level bootstrap {_iv(d['ci95_low'], d['ci95_high'], unit)}, t over instance "
            f"means {_iv(t[0], t[1], unit)}; {d['n_instances']} instances x {d['n_seeds']} seeds{count})")


def _which_controller(agent: dict | None) -> str:
    """'The residual PPO controller (`configs/X.yaml`)', read from the agent's own record."""
    if not agent:
        return "The controller"
    control = (agent.get("action_map") or {}).get("control") or {}
    words = ["The"] + (["residual"] if control.get("residual") else []) + (
        ["anchored"] if control.get("features") == "scale_free_anchored" else []) + (
        [str(agent["algo"]).upper()] if agent.get("algo") else []) + ["controller"]
    if agent.get("instance_set"):
        words.append(f"(`configs/{agent['instance_set']}.yaml`)")
    return " ".join(words)


def _how_learned(agent: dict) -> str:
    """How many decisions taught it, and whether PPO or only imitation did: a warm start that
    PPO never moved is an imitated rule, and the headline must say so."""
    took = (f"`{agent.get('command', '?')}`, {_minutes(agent.get('training_seconds'))} of training in its last "
            "invocation")
    imitation = agent.get("imitation") or {}
    steps = agent.get("total_timesteps")
    if steps is None:
        return f"from an unrecorded number of decisions ({took})"
    if imitation and not steps:
        return (f"**imitation only**: it copies the rule '{imitation.get('source')}' from "
                f"{imitation.get('decisions')} demonstrated decisions, with no reinforcement learning after ({took})")
    if imitation:
        return (f"warm-started by imitating '{imitation.get('source')}' ({imitation.get('decisions')} decisions), "
                f"then learned from {steps} decisions ({took})")
    return f"learned from {steps} decisions ({took})"


def controller_headline(results: Path) -> str:
    """The README's first paragraph: the residual controller on the wide family's held-out
    instances, against the recipe it corrects and from a user's wrong start, as heldout.json says."""
    h = _read(results / HEADLINE_CONTROLLER / "heldout.json")
    agent = _read(results / HEADLINE_CONTROLLER / "agent.json")
    if h is None or "rescue" not in h.get("summary", {}):
        return (f"(the wide family's controller is not evaluated yet: {HEADLINE_CONTROLLER}/heldout.json with a "
                "rescue section is missing)")
    s, r = h["summary"], h["summary"]["rescue"]
    pm = r["policy_minus_base_recipe"]
    ir = pm["in_range"]
    if not ir or "ci95_low" not in ir:
        verdict = "too few instances in the training range for an interval: **no verdict**"
    else:
        verdict = {-1: "**the controller beats the recipe tuned once** (both intervals below 0)",
                   1: "**the recipe tuned once is better** (both intervals above 0): use the recipe today",
                   0: "**not shown better than the recipe tuned once** by the project's rule (both intervals below "
                      "0), so the recipe alone is still the simpler choice"}[
            sign_by_both_intervals(ir["ci95_low"], ir["ci95_high"], *ir["t_ci95_over_instances"])]
    trained = _how_learned(agent) if agent else "its training is not recorded"
    m = r["methods"]
    gaps = "; ".join(f"{name} {m[name]['median_gap']:+.1%} [{m[name]['median_gap_ci95'][0]:+.1%}, "
                     f"{m[name]['median_gap_ci95'][1]:+.1%}] at {m[name]['mean_compute_steps']:.0f} steps"
                     for name in ("policy_guess", "held_guess", "range_test") if name in m)
    lines = [f"**Headline (issue 24).** {_which_controller(agent)} on the wide SmolLM2 family, {trained}, "
             "on held-out instances it never saw, test loss "
             "(negative = controller better):",
             f"from the recipe's own start, controller − transferred recipe = {_paired_text(ir)}: {verdict}; "
             f"on the extrapolation instances apart ({', '.join(pm['extrapolation_instances']) or 'none'}): "
             f"{_paired_text(pm['extrapolation'])}.",
             f"From a user's wrong guess (the recipe's lr x 0.01–100), the median gap to the recipe's test loss "
             f"(95% interval, instances resampled) is: {gaps}; the goal, the controller's median gap ≤ "
             f"{r['gap_goal']:.0%} (point estimate), is {'met' if r['goal_met'] else 'not met'}."]
    cr = r.get("correction_from_recipe")
    if cr:
        lo, hi = cr["per_instance_mean_range"]
        lines.append(f"From the recipe's start its last lr is a median {cr['median_final_lr_scale']:.2f}x the recipe's "
                     f"(instances' means {lo:.2f}-{hi:.2f}x).")
    st = r.get("steering_from_guesses")
    if st and st.get("scale_contraction") is not None:
        a, b, c = st["median_abs_start_log2_scale"], st["median_abs_final_log2_scale"], st["scale_contraction"]
        closed = (a - b) / a if a > 0 else 0.0
        lines.append(f"From the guesses, the median |log2(lr / recipe's lr)| goes from {a:.2f} at the start to {b:.2f} "
                     f"at the end (0 = the recipe's lr): it closes {closed:.0%} of the distance in log lr"
                     f"{'' if closed > 0 else ', so it does not pull wrong guesses back'}; the final scales spread "
                     f"{c:.2f}x as widely as the starts (1 = holds the guess).")
    lines.append(f"Numbers: `{s['command']}` ({_machine(s.get('machine'))}); tables and plots in "
                 f"[{HEADLINE_CONTROLLER}/heldout.md](results/{HEADLINE_CONTROLLER}/heldout.md).")
    return "\n".join(lines)


README_BLOCKS = {"controller": controller_headline, "headline": headline, "main-job": main_job}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}: written by python -m agents.report; do not edit by hand -->", f"<!-- /{name} -->"


def with_blocks(readme: str, results: Path) -> str:
    """The README with every generated block rewritten (a ValueError naming a block whose markers
    are missing, repeated or out of order)."""
    for name, make in README_BLOCKS.items():
        begin, end = markers(name)
        if readme.count(begin) != 1 or readme.count(end) != 1 or readme.index(end) < readme.index(begin):
            raise ValueError(f"the {name!r} block needs the line {begin} once, then the line {end} once")
        head, rest = readme.split(begin, 1)
        _, tail = rest.split(end, 1)
        readme = f"{head}{begin}\n{make(results)}\n{end}{tail}"
    return readme
