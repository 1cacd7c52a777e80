"""Do the tests catch a wrong program? Apply one realistic single-line fault at a time, run the tests aimed at
it, report `caught` or `MISSED`, and put the line back (also on Ctrl-C). Every fault here must be caught.

    python bench/mutations.py            # all faults, ~4 min on 2 cores
    python bench/mutations.py ppo        # only the faults whose name or file contains "ppo"

A fault is (file, the line as it is, the line made wrong, what is wrong, the tests to run). When you add a
test for a line of the method, add the fault it is meant to catch here and see it caught.
"""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PPO, SAMPLING, MODEL = "tests/test_ppo.py", "tests/test_sampling.py", "tests/test_model.py"
DIST_PPO = "tests/test_distributed.py::test_ppo_two_processes_equal_one[ddp]"

FAULTS = [
    # girl/ppo.py: the update
    ("girl/ppo.py", "kl = kl_penalty(logp_old, logp_ref, cfg.kl_estimator)",
     "kl = kl_penalty(logp_ref, logp_old, cfg.kl_estimator)", "the KL penalty the wrong way round", PPO),
    ("girl/ppo.py", "advantages = masked_whiten(advantages, mask)", "advantages = advantages", "advantages not whitened", PPO),
    ("girl/ppo.py", "((pg_loss + cfg.vf_coef * vf_loss) * (share * world)).backward()",
     "((pg_loss + vf_loss) * (share * world)).backward()", "vf_coef ignored", PPO),
    ("girl/ppo.py", "            actor_opt.zero_grad(set_to_none=True)\n", "", "the actor's zero_grad skipped", PPO),
    ("girl/ppo.py", "            critic_opt.zero_grad(set_to_none=True)\n", "", "the critic's zero_grad skipped", PPO),
    ("girl/ppo.py", "policy_loss(logp, logp_old[mine], advantages[mine], m, cfg.clip)",
     "policy_loss(logp, logp_ref[mine], advantages[mine], m, cfg.clip)", "L_π: ratio to π_ref, not π_old", PPO),
    ("girl/ppo.py", "policy_loss(logp, logp_old[mine], advantages[mine], m, cfg.clip)",
     "policy_loss(logp, logp_old[mine], returns[mine], m, cfg.clip)", "L_π: returns for advantages", PPO),
    ("girl/ppo.py", "policy_loss(logp, logp_old[mine], advantages[mine], m, cfg.clip)",
     "policy_loss(logp_old[mine], logp, advantages[mine], m, cfg.clip)", "L_π: new and old log-probs swapped", PPO),
    ("girl/ppo.py", "value_loss(values, values_old[mine], returns[mine], m, cfg.value_clip)",
     "value_loss(values, values_old[mine], advantages[mine], m, cfg.value_clip)", "L_V: advantages for returns", PPO),
    ("girl/ppo.py", "value_loss(values, values_old[mine], returns[mine], m, cfg.value_clip)",
     "value_loss(values, values_old[mine], returns[mine], m, cfg.clip)", "L_V: the policy's clip", PPO),
    ("girl/ppo.py", "logp, entropy = response_logprobs(actor, *args, cfg.temperature)",
     "logp, entropy = response_logprobs(actor, *args)", "π without the rollout's temperature", PPO),
    ("girl/ppo.py", "logp_ref[idx] = gather_rows(response_logprobs(ref, *args, cfg.temperature)[0], world)",
     "logp_ref[idx] = gather_rows(response_logprobs(ref, *args)[0], world)", "π_ref without the temperature", PPO),
    ("girl/ppo.py", "gae(rewards, values_old, mask, cfg.gamma, cfg.lam)", "gae(rewards, values_old, mask, cfg.lam, cfg.gamma)",
     "γ and λ swapped", PPO),
    ("girl/ppo.py", "order = first_order if epoch == 0 else torch.randperm", "order = first_order if True else torch.randperm",
     "minibatches never reshuffled", PPO),
    ("girl/ppo.py", "kl=(kl.sum(-1)).mean().item()", "kl=kl.mean().item()", "KL reported per token, not per J′", PPO),
    ("girl/ppo.py", "explained_variance=explained_variance(values_old, returns, mask)",
     "explained_variance=explained_variance(returns, values_old, mask)", "explained variance's arguments swapped", PPO),
    ("girl/ppo.py", 'st["grad_norm_critic"] = clip_grad_norm(critic, cfg.grad_clip)',
     'st["grad_norm_critic"] = 0.0', "the critic's gradient not clipped", PPO),
    ("girl/ppo.py", "    rewards = -beta * kl * mask", "    rewards = beta * kl * mask", "the KL rewarded", PPO),
    ("girl/losses.py", "        var = var * n / (n - 1)", "        var = var", "whitening by the biased variance", PPO),
    # girl/lm/sampling.py: what is drawn and its log-prob
    ("girl/lm/sampling.py", "probs = logits.softmax(dim=-1)", "probs = (logits / temperature).softmax(dim=-1)",
     "temperature applied twice when drawing", SAMPLING),
    ("girl/lm/sampling.py", "probs = logits.softmax(dim=-1)", "probs = (logits * temperature).softmax(dim=-1)",
     "temperature undone when drawing", SAMPLING),
    ("girl/lm/sampling.py", "drop = probs.cumsum(dim=-1) - probs >= top_p", "drop = probs.cumsum(dim=-1) >= top_p",
     "top-p drops the token that crosses p", SAMPLING),
    ("girl/lm/sampling.py", 'logits = logits.masked_fill(logits < kth, float("-inf"))',
     'logits = logits.masked_fill(logits <= kth, float("-inf"))', "top-k keeps k − 1", SAMPLING),
    ("girl/lm/sampling.py", "probs = sorted_logits.softmax(dim=-1)", "probs = (sorted_logits * temperature).softmax(dim=-1)",
     "top-p on the untempered distribution", SAMPLING),
    ("girl/lm/sampling.py", "entropy = -(logp_all.exp() * logp_all).sum(-1)", "entropy = -(logp_all.exp() * logp_all).mean(-1)",
     "entropy averaged over the vocabulary", PPO),
    # girl/lm: the architecture and its config
    ("girl/lm/hf.py", 'norm_eps=hf.get("rms_norm_eps", 1e-6)', "norm_eps=1e-6", "config's rms_norm_eps ignored", MODEL),
    ("girl/lm/hf.py", 'norm_eps=hf.get("layer_norm_epsilon", 1e-5)', "norm_eps=1e-6", "gpt2's layer_norm_epsilon ignored", MODEL),
    ("girl/lm/model.py", "x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)",
     "x32 = x32 / (x32.pow(2).mean(-1, keepdim=True).sqrt() + self.eps)", "RMSNorm's eps outside the square root", MODEL),
    ("girl/lm/model.py", "nn.init.normal_(self.head.weight, std=1 / math.sqrt(config.dim + 1))",
     "nn.init.normal_(self.head.weight, std=1 / config.dim)", "U's head initialised at std 1/d", "tests/test_rm.py"),
    ("girl/lm/model.py", "nn.init.normal_(self.head.weight, std=1 / math.sqrt(config.dim + 1))",
     "nn.init.normal_(self.head.weight, std=0.02)", "U's head initialised like the body", "tests/test_rm.py"),
    # the market's references, the scripts' bookkeeping
    ("girl/market/oracle.py", "best = [max(range(len(jobs))", "best = [min(range(len(jobs))", "the ceiling is the worst job",
     "tests/test_market.py"),
    ("girl/market/oracle.py", "rng = random.Random(seed)", "rng = random.Random(0)", "the floor ignores its seed",
     "tests/test_market.py"),
    ("girl/losses.py", "return -F.logsigmoid(r_pos - r_neg - margin).mean()", "return -F.logsigmoid(r_neg - r_pos - margin).mean()",
     "L_rmt prefers the rejected JD", "tests/test_train_rm.py::test_u_learns_a_preference_with_a_known_answer"),
    ("girl/cli.py", 'improved = loss < state["best_eval_loss"]', 'improved = loss > state["best_eval_loss"]',
     "SFT keeps the worst checkpoint", "tests/test_train_sft.py::test_killed_and_resumed_run_equals_uninterrupted_run"),
    ("train_ppo.py", "after = evaluation.policy_eval(actor, tok, eval_prompts, **eval_args)",
     "after = evaluation.policy_eval(ref, tok, eval_prompts, **eval_args)", "PPO's 'after' measures the reference",
     "tests/test_train_ppo.py::test_writes_the_new_g_and_its_metrics"),
    ("generate.py", "temperature=args.temperature, top_k=args.top_k", "temperature=1.0, top_k=args.top_k",
     "generate.py ignores --temperature", "tests/test_generate.py::test_one_cv_as_text_and_as_json"),
    ("girl/evaluation.py", "s = greedy_jds(G, tok, prompts, max_new_tokens, autocast, batch_size)",
     "s = greedy_jds(systems[0][1], tok, prompts, max_new_tokens, autocast, batch_size)",
     "every greedy row decodes the SFT model", "tests/test_generate.py::test_eval_table"),
    ("girl/evaluation.py", "0.0 if ref is None else statistics.fmean(s.kl)", "0.0 if ref is None else -statistics.fmean(s.kl)",
     "the table's KL to SFT negated", "tests/test_generate.py::test_eval_table"),
    # N processes compute what one does
    ("train_sft.py", "targets = global_sum(sum((b[\"labels\"][:, 1:] != IGNORE).sum().item() for b in micro), world, device)",
     "targets = sum((b[\"labels\"][:, 1:] != IGNORE).sum().item() for b in micro)",
     "SFT: each rank's own token count", "tests/test_distributed.py::test_sft_two_processes_equal_one"),
    ("train_sft.py", 'loss = sft_loss(logits, b["labels"].to(device), reduction="sum") * world / targets',
     'loss = sft_loss(logits, b["labels"].to(device), reduction="sum") / targets',
     "SFT: DDP's averaging not undone", "tests/test_distributed.py::test_sft_two_processes_equal_one"),
    ("train_rm.py", "loss = rm_loss(r_pos, r_neg, args.margin, args.center_coef) * len(pairs) * world / n_pairs",
     "loss = rm_loss(r_pos, r_neg, args.margin, args.center_coef) * len(pairs) / n_pairs",
     "RM: DDP's averaging not undone", "tests/test_distributed.py::test_rm_two_processes_equal_one"),
    ("girl/ppo.py", "((pg_loss + cfg.vf_coef * vf_loss) * (share * world)).backward()",
     "((pg_loss + cfg.vf_coef * vf_loss) * share).backward()", "PPO: DDP's averaging not undone", DIST_PPO),
    ("girl/ppo.py", "((pg_loss + cfg.vf_coef * vf_loss) * (share * world)).backward()",
     "((pg_loss + cfg.vf_coef * vf_loss) * world).backward()", "PPO: a process's loss not weighted by its tokens",
     DIST_PPO),
    ("girl/ppo.py", "st = global_sum({k: v * share for k, v in st.items()}, world, mask.device)", "pass",
     "PPO: statistics of one process's rows", DIST_PPO),
    ("train_ppo.py", "args.temperature, rngs)", "args.temperature, rngs[0])", "PPO: one generator for a process's CVs",
     DIST_PPO),
    ("girl/lm/sampling.py", "token = torch.cat([torch.multinomial(p, 1, generator=g)",
     "token = torch.cat([torch.multinomial(p, 1, generator=generator[0])", "one generator for every row", SAMPLING),
    ("girl/lm/checkpoint.py", "    if is_sharded(model):  # every process reads", "    if False:  # every process reads",
     "FSDP: AdamW's moments not cut into shards on resume", "tests/test_distributed.py::test_sft_fsdp_resumes_exactly"),
]


def main(pattern: str | None) -> int:
    missed = 0
    for path, line, wrong, what, tests in FAULTS:
        if pattern and pattern not in path and pattern not in what:
            continue
        file = ROOT / path
        source = file.read_text(encoding="utf-8")
        if source.count(line) != 1:
            print(f"STALE   {what}: {path} no longer holds that line once; update this list")
            missed += 1
            continue
        file.write_text(source.replace(line, wrong), encoding="utf-8")
        try:
            r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests.split()],
                               cwd=ROOT, capture_output=True, text=True)
        finally:
            file.write_text(source, encoding="utf-8")
        failed = [out.split("::", 1)[1].split(" ")[0] for out in r.stdout.splitlines() if out.startswith("FAILED")]
        missed += r.returncode == 0
        print(f"{'caught' if r.returncode else 'MISSED'}  {what:45s} {', '.join(failed)[:150]}", flush=True)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else None))
