#!/usr/bin/env python3
"""Renders one or more JSON files of examples/distill_dllm2rec (--json) as the README's Markdown
table: test HR@10, NDCG@10, MRR (mean ± std over seeds), the paired NDCG@10 difference against
the plain student of the same seed, and validation NDCG@10.

Several files are merged (runs keyed by model and seed; a run present twice must agree), so
that seeds trained by separate invocations, for instance one per process or per day, give one
table. Every file must describe the same data and training settings, else the script stops;
runs whose distillation settings differ (for instance γ_o) become separate, labelled rows.

    /usr/bin/python3 bench/dllm2rec_table.py bench/results/dllm2rec_games_seed1.json \
        bench/results/dllm2rec_games_seed2.json bench/results/dllm2rec_games_seed3.json
"""
import json
import statistics
import sys

# Settings that shape every run, and those that shape only runs with ranking or embedding
# distillation: runs that differ in the latter are shown as separate rows (labelled by the
# difference), runs that differ in the former cannot share a table.
COMMON = ["data", "split", "dros", "students", "student_head", "epochs", "patience", "batch_size", "lr", "teacher_history_masked"]
PART = {"ranking": "ranking_distillation", "embedding": "embedding_distillation"}


def mean_std(values, digits):
    if not values:
        return "n/a"
    m = statistics.mean(values)
    s = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{m:.{digits}f} ± {s:.{digits}f}"


def parts(name):
    variant = name.split(" + ")[1] if " + " in name else "plain"
    return [p for p in ("ranking", "embedding") if variant in (p, "both")]


def load(paths):
    runs, common, teacher, settings = {}, None, None, {}
    for path in paths:
        out = json.load(open(path))
        c = out["configuration"]
        mine = {key: c.get(key) for key in COMMON}
        if common is None:
            common = mine
        for key in COMMON:  # a key missing from one file (written before the setting existed) is not compared
            if mine[key] is None or common[key] is None:
                common[key] = common[key] if common[key] is not None else mine[key]
                continue
            if json.dumps(mine[key], sort_keys=True) != json.dumps(common[key], sort_keys=True):
                sys.exit(f"{path}: setting '{key}' differs from {paths[0]}: {mine[key]} against {common[key]}")
        for run in out["runs"]:
            ndcg = run["test"]["metrics"]["NDCG@10"]
            if run["name"].startswith("teacher"):
                if teacher is not None and abs(teacher["test"]["metrics"]["NDCG@10"] - ndcg) > 1e-9:
                    sys.exit(f"{path}: its teacher (test NDCG@10 {ndcg:.4f}) is not the first file's "
                             f"({teacher['test']['metrics']['NDCG@10']:.4f})")
                teacher = run
                continue
            own = {PART[p]: c.get(PART[p]) for p in parts(run["name"])}
            key = (run["name"], json.dumps(own, sort_keys=True), run["seed"])
            if key in runs and abs(runs[key]["test"]["metrics"]["NDCG@10"] - ndcg) > 1e-9:
                sys.exit(f"{path}: {run['name']} seed {run['seed']} differs from an earlier file's run with the same settings")
            runs[key] = run
            settings[key[1]] = own
    return common, teacher, runs, settings


def label(name, own, variants_of_name, settings):
    """The run's name, plus the settings in which it differs from the other rows of that name."""
    if len(variants_of_name) < 2:
        return name
    differing = []
    for part, config in own.items():
        for k, v in sorted(config.items()):
            if len({json.dumps(settings[o].get(part, {}).get(k)) for o in variants_of_name}) > 1:
                differing.append(f"{k} {v}")
    return f"{name} [{', '.join(differing)}]"


def main(paths):
    common, teacher, runs, settings = load(paths)
    rows = []
    for name, own, _ in runs:
        if (name, own) not in rows:
            rows.append((name, own))
    seeds = sorted({seed for _, _, seed in runs})
    print(f"seeds {', '.join(map(str, seeds))}; data {common['data']}\n")
    print("| model | HR@10 | NDCG@10 | MRR | NDCG@10 vs plain (paired) | valid NDCG@10 |")
    print("|---|---:|---:|---:|---:|---:|")
    if teacher:
        t = teacher["test"]["metrics"]
        print(f"| teacher | {t['HR@10']:.4f} | {t['NDCG@10']:.4f} | {t['MRR']:.4f} | | |")
    for name, own in rows:
        found = [runs[(name, own, s)] for s in seeds if (name, own, s) in runs]
        cells = [mean_std([r["test"]["metrics"][m] for r in found], 4) for m in ("HR@10", "NDCG@10", "MRR")]
        base = name.split(" + ")[0]
        effect = ""
        if " + " in name:
            diffs, rel = [], []
            for r in found:
                plain = runs.get((base, json.dumps({}), r["seed"]))
                if plain:
                    diffs.append(r["test"]["metrics"]["NDCG@10"] - plain["test"]["metrics"]["NDCG@10"])
                    rel.append(diffs[-1] / plain["test"]["metrics"]["NDCG@10"])
            if diffs:
                effect = f"{mean_std(diffs, 4)} ({100 * statistics.mean(rel):+.1f}%)"
                if teacher:  # where the student lands between its plain self and the teacher
                    plains = [runs[(base, json.dumps({}), r["seed"])]["test"]["metrics"]["NDCG@10"] for r in found
                              if (base, json.dumps({}), r["seed"]) in runs]
                    lead = teacher["test"]["metrics"]["NDCG@10"] - statistics.mean(plains)
                    if lead > 0:
                        effect += f", {100 * statistics.mean(diffs) / lead:.0f}% of the teacher's lead"
        valid = mean_std([r["validation_ndcg10"] for r in found], 4)
        shown = label(name, settings[own], [o for n, o in rows if n == name], settings)
        print(f"| {shown} ({len(found)} seeds) | {cells[0]} | {cells[1]} | {cells[2]} | {effect} | {valid} |")


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    main(sys.argv[1:])
