"""The main job's last step: what each objective learnt, beside a reference on the same rows.

    summary = summarize(out, shards, model_dir, seconds)   # writes <out>/summary.json, returns it
    print(objectives_table(summary))

Rows (all on the labelled institution's test split; the fine-tuning heads saw its train split):
    regeneration      model PSNR / SSIM   vs the neighbour-mean fill and the upsampled coarse level
    pair matching     AUC of I_pair, own report vs a report with other findings   vs chance (0.5)
    classification    img_only / txt_only mean AUC with a bootstrap 95% interval over test images,
                      vs the same fine-tuning from random initialisation and, for the text, TF-IDF +
                      logistic regression fitted on the same training rows
    retrieval         P@1 per query type   vs random 64-bit codes
    zero-shot         mean AUC of the pair head's score for each finding's sentences, no labels,
                      with a bootstrap 95% interval   vs the same architecture with random weights
    image -> report   Recall@1/5/10 of each image's own report among the test reports   vs random
                      scores
    label efficiency  (when run) pre-trained vs random init at each labelled budget, mean ± sd
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from mixvlp_ds.apps.references import bootstrap_mean_auc, mean_auc_of, tfidf_mean_auc


def classification(finetune_dir: Path, row: str) -> dict:
    """Mean AUC and its bootstrap interval of one fine-tuned head (its saved test scores)."""
    saved = np.load(finetune_dir / "models" / row / "eval_scores.npz")
    labels, scores = saved["labels"], saved["scores"]
    lo, hi = bootstrap_mean_auc(labels, scores)
    return {"auc": mean_auc_of(labels, scores), "ci": [lo, hi], "n": int(len(labels))}


def text_reference(shards: str, label_space: str | None = None, split: str = "test") -> dict:
    """TF-IDF + logistic regression on the fine-tuning rows (train -> `split`), the txt_only policy."""
    from mixvlp_ds.apps.classification import apply_label_policy
    from mixvlp_ds.apps.rows import labelled_samples

    def rows(split):
        samples = [s for s in labelled_samples(shards, split, label_space) if s["text"]]
        labels = apply_label_policy(np.stack([s["labels"] for s in samples]), "zeros")
        return [s["text"] for s in samples], labels

    (tr_x, tr_y), (te_x, te_y) = rows("train"), rows(split)
    auc, _ = tfidf_mean_auc(tr_x, tr_y, te_x, te_y)
    return {"auc": auc, "n_train": len(tr_x), "n_test": len(te_x)}


def pair_scores(out: Path) -> dict:
    """The no-label figures of <out>/zeroshot and <out>/report_retrieval (pre-trained and random init)."""
    zs = json.loads((out / "zeroshot" / "results.json").read_text())["results"]
    rr = json.loads((out / "report_retrieval" / "results.json").read_text())["results"]
    trained = next(k for k in zs if k != "random init")
    model, scratch = zs[trained], zs["random init"]
    i2t = rr[trained]["image_to_report"]
    summary = {"zeroshot_img_auc": model["mean_auc"], "zeroshot_img_auc_ci": model["ci"],
               "zeroshot_scratch_auc": scratch["mean_auc"], "zeroshot_scratch_auc_ci": scratch["ci"],
               "zeroshot_per_finding": model["auc"]}
    for k in (1, 5, 10):
        summary[f"i2t_recall_at_{k}"] = i2t["recall_at"][str(k)]
        summary[f"i2t_recall_random_at_{k}"] = i2t["random"]["recall_at"][str(k)]
    summary["i2t_recall_scratch_at_10"] = rr["random init"]["image_to_report"]["recall_at"]["10"]
    summary["i2t_median_rank"] = i2t["median_rank"]
    summary["i2t_median_rank_random"] = i2t["random"]["median_rank"]
    summary["i2t_label_precision_at_10"] = i2t["label_precision_at"]["10"]
    summary["i2t_label_precision_random_at_10"] = i2t["random"]["label_precision_at"]["10"]
    return summary


def summarize(out: Path, shards: str, model_dir: Path, seconds: float,
              label_efficiency: list[dict] | None = None) -> dict:
    """Collect the main job's results and references into <out>/summary.json."""
    from mixvlp_ds.apps.probe import pair_match_auc
    from mixvlp_ds.model import MixVLP

    regen = json.loads((out / "regen" / "results.json").read_text())["results"]
    refs = next(iter(regen.values()))["references"]
    model = MixVLP.from_pretrained(model_dir).eval()
    pair = pair_match_auc(model, model_dir / "tokenizer", shards, "test")
    img = classification(out / "finetune_cls", "img_only")
    txt = classification(out / "finetune_cls", "txt_only")
    scratch = {row: classification(out / "finetune_cls_scratch", row) for row in ("img_only", "txt_only")}
    retrieval = json.loads((out / "finetune_retrieval" / "results.json").read_text())["results"]
    cls = json.loads((out / "finetune_cls" / "results.json").read_text())["results"]
    lowest = min(((a, name) for name, a in cls["txt_only"]["auc"].items() if a is not None),
                 default=(None, None))                # a finding with both classes in test
    summary = {
        "img_only_auc": img["auc"], "img_only_auc_ci": img["ci"],
        "txt_only_auc": txt["auc"], "txt_only_auc_ci": txt["ci"],
        "txt_only_lowest_finding": {"finding": lowest[1], "auc": lowest[0]},
        "scratch_img_only_auc": scratch["img_only"]["auc"],
        "scratch_txt_only_auc": scratch["txt_only"]["auc"],
        "tfidf_auc": text_reference(shards)["auc"],
        "pair_auc": pair["auc"],
        "regen_psnr": refs["model"]["psnr"], "regen_ssim": refs["model"]["ssim"],
        "regen_psnr_neighbour": refs["neighbour mean"]["psnr"],
        "regen_ssim_neighbour": refs["neighbour mean"]["ssim"],
        "regen_psnr_coarse": refs["coarse level upsampled"]["psnr"],
        "regen_ssim_coarse": refs["coarse level upsampled"]["ssim"],
        "p_at_1": {q: r["p_at_k"]["1"] for q, r in retrieval.items()},
        "p_at_1_random_codes": {q: r["random_codes"]["1"] for q, r in retrieval.items()},
        **pair_scores(out),
        "label_efficiency": [{k: v for k, v in e.items() if not k.endswith("_draws")}
                             for e in label_efficiency] if label_efficiency else None,
        "seconds": round(seconds, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def objectives_table(s: dict) -> str:
    def f(x):
        return "n/a" if x is None else f"{x:.3f}"

    lines = ["| objective | this model | reference(s), same rows |", "|---|---|---|",
             f"| regeneration PSNR / SSIM (test images) | {s['regen_psnr']:.2f} dB / "
             f"{s['regen_ssim']:.3f} | "
             f"neighbour mean {s['regen_psnr_neighbour']:.2f} dB / {s['regen_ssim_neighbour']:.3f}; "
             f"upsampled coarse level {s['regen_psnr_coarse']:.2f} dB / {s['regen_ssim_coarse']:.3f} |",
             f"| pair matching AUC (own vs other-findings report) | {f(s['pair_auc'])} | chance 0.500 |",
             f"| img_only mean AUC [95% CI] | {f(s['img_only_auc'])} [{f(s['img_only_auc_ci'][0])}, "
             f"{f(s['img_only_auc_ci'][1])}] | random init {f(s['scratch_img_only_auc'])} |",
             f"| txt_only mean AUC [95% CI] | {f(s['txt_only_auc'])} [{f(s['txt_only_auc_ci'][0])}, "
             f"{f(s['txt_only_auc_ci'][1])}] | random init {f(s['scratch_txt_only_auc'])}; TF-IDF + LR "
             f"{f(s['tfidf_auc'])} |",
             f"| txt_only, its lowest finding | {s['txt_only_lowest_finding']['finding'] or 'none'} "
             f"{f(s['txt_only_lowest_finding']['auc'])} | chance 0.500 |"]
    for q, p1 in s["p_at_1"].items():
        chance = s["p_at_1_random_codes"][q]
        lines.append(f"| retrieval P@1, {q} query | {f(p1)} | random 64-bit codes {f(chance)} |")
    lo, hi = s["zeroshot_img_auc_ci"]
    slo, shi = s["zeroshot_scratch_auc_ci"]
    lines += [f"| zero-shot mean AUC [95% CI], no labels | {f(s['zeroshot_img_auc'])} [{f(lo)}, {f(hi)}] | "
              f"random init {f(s['zeroshot_scratch_auc'])} [{f(slo)}, {f(shi)}] |",
              f"| image -> report R@1 / R@5 / R@10 | {f(s['i2t_recall_at_1'])} / {f(s['i2t_recall_at_5'])} / "
              f"{f(s['i2t_recall_at_10'])} | random scores {f(s['i2t_recall_random_at_1'])} / "
              f"{f(s['i2t_recall_random_at_5'])} / {f(s['i2t_recall_random_at_10'])} |"]
    for e in s.get("label_efficiency") or []:
        for side, row in (("img", "img_only"), ("txt", "txt_only")):
            lines.append(f"| {row} fine-tuned on {e['rows']:.0f} labelled rows ({e['percent']:g}%) | "
                         f"{f(e[f'pretrained_{side}'])} ± {f(e[f'pretrained_{side}_sd'])} | random init "
                         f"{f(e[f'scratch_{side}'])} ± {f(e[f'scratch_{side}_sd'])} |")
    return "\n".join(lines)
