"""A synthetic job market whose true matching function is known, so that every stage can be measured.

The paper trained on a private recruitment platform. Here seekers and jobs are drawn from latent
attributes, rendered into varied CV and JD texts, and matched by a ground-truth compatibility
f(seeker, job) in [0, 1]. It is a test bench, not part of the method: the method (template, data,
losses, reward, ppo, evaluation) never imports it; the scripts do, when a user runs on the market.

    world.py    Seeker, Job, f, who applies where, what recruiters accept
    text.py     how CVs and JDs are written in zh and en, and the parser that reads a JD back
    oracle.py   f of any JD text (the oracle), the simulated recruiter, reference jobs
    splits.py   the application log cut into the stages' JSONL files; the bench a judge of fit is measured on

    python -m girl.market --out data/ --lang zh      # write the splits (the scripts do this on first use)

All of it is synthetic: no real people or companies.
"""

from girl.market.oracle import (
                                Oracle,
                                oracle_accuracy,
                                oracle_eval,
                                oracle_score,
                                random_job_comparisons,
                                recruiter_comparisons,
                                recruiter_prefers,
                                reference_jobs,
                                references,
)
from girl.market.splits import (SPLITS, JudgeBench, MarketError, build, ensure, heldout, judge_bench, load_jobs,
                                reference_jds, seekers)
from girl.market.text import LANGS, parse_jd, render_cv, render_jd
from girl.market.world import Job, Seeker, compatibility

__all__ = ["Job", "JudgeBench", "LANGS", "MarketError", "Oracle", "SPLITS", "Seeker", "build", "compatibility", "ensure", "heldout",
           "judge_bench", "load_jobs",
           "oracle_accuracy", "oracle_eval", "oracle_score", "parse_jd", "random_job_comparisons", "recruiter_comparisons",
           "recruiter_prefers", "reference_jds", "reference_jobs", "references", "render_cv", "render_jd", "seekers"]
