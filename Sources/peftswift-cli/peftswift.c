/* peftswift: the command-line front end of libpeftswift (written on the public C API only).
 *
 *   peftswift finetune --model M --data FILE [--data FILE ...] --out DIR [options]
 *   peftswift generate --model M [--adapter DIR] --prompt TEXT [options]
 *   peftswift info --model M
 *
 * M is a GGUF file or a Hugging Face checkpoint directory. `peftswift help` lists the options.
 * Ctrl-C during finetune stops after the current step and writes a checkpoint that
 * `--resume auto` continues from (bit for bit). */
#define _POSIX_C_SOURCE 200809L
#include <peftswift.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t interrupted = 0;
static void on_sigint(int sig) { (void)sig; interrupted = 1; signal(SIGINT, SIG_DFL); }

static const char *usage =
    "usage:\n"
    "  peftswift finetune --model M --data FILE [--data FILE ...] --out DIR [options]\n"
    "  peftswift generate --model M [--adapter DIR] --prompt TEXT [options]\n"
    "  peftswift info --model M\n"
    "model: a GGUF file or a Hugging Face checkpoint directory (config.json + model.safetensors)\n"
    "  --dense               keep the base in fp32 (default: NF4 + double quantization, QLoRA)\n"
    "  --threads N           kernel threads (default: all CPUs)\n"
    "  --compute-dtype fp32|bf16   precision of the products with the frozen weights (fp32; bf16 needs AVX512_BF16)\n"
    "finetune:\n"
    "  --format text|jsonl   text files packed into sequences, or {\"instruction\",\"response\"} lines (text)\n"
    "  --steps N (100)  --seq-len N (256)  --batch N (4)  --grad-accum N (1)\n"
    "  --lr X (2e-4)  --warmup N (0)  --schedule cosine|linear|constant (cosine)  --weight-decay X (0)\n"
    "  --r N (16)  --alpha X (32)  --dropout X (0.05)  --targets q_proj,k_proj,... (all 7 projections)\n"
    "  --optim adamw|adamw8bit (adamw)  --paged-budget MIB (0: unpaged)  --clip X (1.0)\n"
    "  --checkpoint-every N (0)  --resume auto|DIR  --recompute  --seed N (42)\n"
    "  --prompt TEXT         show the model's answer before and after training\n"
    "generate:\n"
    "  --max-new N (128)  --temperature X (0: greedy)  --top-p X (1)  --top-k N (0)  --seed N  --raw (no chat template)\n";

static int fail(const char *what) {
    fprintf(stderr, "peftswift: %s: %s\n", what, pst_last_error());
    return 1;
}

static int32_t print_token(int32_t token, const char *bytes, size_t n, void *user) {
    (void)token; (void)user;
    fwrite(bytes, 1, n, stdout);
    fflush(stdout);
    return interrupted ? 1 : 0;
}

/* Prints the model's answer to prompt (chat template unless raw). */
static int answer(pst_llm *m, const char *prompt, int raw, const pst_generate_params *gp) {
    int32_t ids[4096];
    int64_t n = 0;
    pst_status st = raw ? pst_llm_tokenize(m, prompt, strlen(prompt), PST_TOKENIZE_PARSE_SPECIAL, ids, 4096, &n)
                        : pst_llm_chat_prompt(m, prompt, NULL, ids, 4096, &n);
    if (st != PST_OK) return fail("prompt");
    int64_t got = 0;
    if (pst_llm_generate(m, ids, (size_t)n, gp, print_token, NULL, NULL, 0, &got) != PST_OK) return fail("generate");
    printf("\n");
    fflush(stdout);
    return 0;
}

static int32_t show_progress(const pst_train_progress *p, void *user) {
    (void)user;
    printf("step %4lld/%lld  loss %.4f  lr %.2e  |g| %.3f  %6.0f tok/s  RSS %5lld MiB  %7.1f s%s%s\n", (long long)p->step,
           (long long)p->total_steps, p->loss, p->learning_rate, p->grad_norm, p->tokens_per_second,
           (long long)(p->resident_bytes >> 20), p->elapsed_seconds, p->checkpoint ? "  saved " : "",
           p->checkpoint ? p->checkpoint : "");
    fflush(stdout);
    return interrupted ? 1 : 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "help") || !strcmp(argv[1], "--help")) { fputs(usage, argc < 2 ? stderr : stdout); return argc < 2 ? 2 : 0; }
    const char *cmd = argv[1], *model = NULL, *out = NULL, *adapter = NULL, *prompt = NULL, *resume = NULL, *fmt = "text";
    const char *data[256];
    int ndata = 0, dense = 0, raw = 0, compute = PST_DTYPE_F32;
    pst_trainer_params tp;
    pst_generate_params gp;
    if (pst_trainer_params_init(&tp) != PST_OK || pst_generate_params_init(&gp) != PST_OK) return fail("init");
    gp.max_new_tokens = 128;
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        int flag = !strcmp(a, "--dense") || !strcmp(a, "--recompute") || !strcmp(a, "--raw");
        if (!flag && !v) { fprintf(stderr, "peftswift: %s needs a value\n%s", a, usage); return 2; }
        if (!flag) i++;
        if (!strcmp(a, "--model")) model = v;
        else if (!strcmp(a, "--data")) { if (ndata < 256) data[ndata++] = v; }
        else if (!strcmp(a, "--out")) out = v;
        else if (!strcmp(a, "--adapter")) adapter = v;
        else if (!strcmp(a, "--prompt")) prompt = v;
        else if (!strcmp(a, "--resume")) resume = v;
        else if (!strcmp(a, "--format")) fmt = v;
        else if (!strcmp(a, "--dense")) dense = 1;
        else if (!strcmp(a, "--raw")) raw = 1;
        else if (!strcmp(a, "--recompute")) tp.recompute = 1;
        else if (!strcmp(a, "--threads")) { if (pst_set_num_threads(atoi(v)) != PST_OK) return fail("--threads"); }
        else if (!strcmp(a, "--steps")) tp.steps = atoll(v);
        else if (!strcmp(a, "--seq-len")) tp.seq_len = atoi(v);
        else if (!strcmp(a, "--batch")) tp.batch_size = atoi(v);
        else if (!strcmp(a, "--grad-accum")) tp.gradient_accumulation = atoi(v);
        else if (!strcmp(a, "--lr")) tp.learning_rate = atof(v);
        else if (!strcmp(a, "--warmup")) tp.warmup_steps = atoll(v);
        else if (!strcmp(a, "--weight-decay")) tp.weight_decay = atof(v);
        else if (!strcmp(a, "--clip")) tp.clip_norm = atof(v);
        else if (!strcmp(a, "--r")) tp.lora_r = atoi(v);
        else if (!strcmp(a, "--alpha")) tp.lora_alpha = (float)atof(v);
        else if (!strcmp(a, "--dropout")) tp.lora_dropout = (float)atof(v);
        else if (!strcmp(a, "--targets")) tp.target_modules = v;
        else if (!strcmp(a, "--paged-budget")) tp.paged_budget_bytes = atoll(v) << 20;
        else if (!strcmp(a, "--checkpoint-every")) tp.checkpoint_every = atoll(v);
        else if (!strcmp(a, "--seed")) { tp.seed = strtoull(v, NULL, 10); gp.seed = tp.seed; }
        else if (!strcmp(a, "--max-new")) gp.max_new_tokens = atoi(v);
        else if (!strcmp(a, "--temperature")) gp.temperature = (float)atof(v);
        else if (!strcmp(a, "--top-p")) gp.top_p = (float)atof(v);
        else if (!strcmp(a, "--top-k")) gp.top_k = atoi(v);
        else if (!strcmp(a, "--schedule")) {
            tp.schedule = !strcmp(v, "cosine") ? PST_LR_COSINE : !strcmp(v, "linear") ? PST_LR_LINEAR
                        : !strcmp(v, "constant") ? PST_LR_CONSTANT : -1;
        } else if (!strcmp(a, "--compute-dtype")) {
            compute = !strcmp(v, "fp32") ? PST_DTYPE_F32 : !strcmp(v, "bf16") ? PST_DTYPE_BF16 : -1;
            if (compute < 0) { fprintf(stderr, "peftswift: --compute-dtype %s: must be fp32 or bf16\n", v); return 2; }
        } else if (!strcmp(a, "--optim")) {
            tp.optimizer_state = !strcmp(v, "adamw") ? PST_OPTIM_STATE_F32 : !strcmp(v, "adamw8bit") ? PST_OPTIM_STATE_8BIT : -1;
        } else { fprintf(stderr, "peftswift: unknown option %s\n%s", a, usage); return 2; }
    }
    if (strcmp(cmd, "finetune") && strcmp(cmd, "generate") && strcmp(cmd, "info")) {
        fprintf(stderr, "peftswift: unknown command %s\n%s", cmd, usage);
        return 2;
    }
    if (!model) { fprintf(stderr, "peftswift: --model is required\n%s", usage); return 2; }
    pst_llm_load_params lp;
    if (pst_llm_load_params_init(&lp) != PST_OK) return fail("init");
    lp.quantize = !dense;
    lp.compute_dtype = compute;
    pst_llm *m = NULL;
    if (pst_llm_load(model, &lp, &m) != PST_OK) return fail("loading the model");
    pst_llm_info info = {.struct_size = sizeof info};
    if (pst_llm_get_info(m, &info) != PST_OK) return fail("info");
    printf("model %s: %d layers, hidden %d, %d/%d heads, vocab %d, context %d, %.1fM parameters, base %s %.0f MiB\n",
            model, info.layers, info.hidden, info.heads, info.kv_heads, info.vocab, info.max_positions,
            (double)info.parameter_count / 1e6, info.quantized ? "nf4+dq" : "fp32", (double)info.base_bytes / (1 << 20));
    int rc = 0;
    if (!strcmp(cmd, "info")) {
        /* the line above is the information */
    } else if (!strcmp(cmd, "generate")) {
        if (!prompt) { fprintf(stderr, "peftswift: --prompt is required\n"); rc = 2; }
        else if (adapter && pst_llm_load_adapter(m, adapter, "default") != PST_OK) rc = fail("loading the adapter");
        else {
            signal(SIGINT, on_sigint);
            rc = answer(m, prompt, raw, &gp);
        }
    } else {
        if (!ndata || !out) { fprintf(stderr, "peftswift: finetune needs --data and --out\n%s", usage); pst_llm_free(m); return 2; }
        tp.data_format = !strcmp(fmt, "jsonl") ? PST_DATA_JSONL : !strcmp(fmt, "text") ? PST_DATA_TEXT : -1;
        tp.output_dir = out;
        char found[4096];
        if (resume && !strcmp(resume, "auto")) {
            int64_t len = 0;
            resume = pst_trainer_latest_checkpoint(out, found, sizeof found, &len) == PST_OK ? found : NULL;
            printf(resume ? "resuming from %s\n" : "no checkpoint under %s: starting fresh\n", resume ? resume : out);
        }
        tp.resume_from = resume;
        gp.max_new_tokens = gp.max_new_tokens > 48 ? 48 : gp.max_new_tokens;
        if (prompt) {
            printf("before training> %s\n", prompt);
            if ((rc = answer(m, prompt, raw, &gp)) != 0) { pst_llm_free(m); return rc; }
        }
        pst_trainer *t = NULL;
        if (pst_trainer_create(m, data, ndata, &tp, &t) != PST_OK) { pst_llm_free(m); return fail("setting up training"); }
        pst_trainer_info ti = {.struct_size = sizeof ti};
        if (pst_trainer_get_info(t, &ti) != PST_OK) return fail("trainer info");
        printf("data: %lld sequences of %d tokens (%lld with a loss); LoRA r %d on %s: %lld trainable parameters; "
                "step %lld of %lld\n", (long long)ti.rows, ti.seq_len, (long long)ti.target_tokens, tp.lora_r,
                tp.target_modules ? tp.target_modules : "all projections", (long long)ti.trainable_parameters,
                (long long)ti.completed_steps, (long long)ti.total_steps);
        signal(SIGINT, on_sigint);
        signal(SIGTERM, on_sigint);
        if (pst_trainer_train(t, show_progress, NULL) != PST_OK) rc = fail("training");
        else if (interrupted) {
            char ck[4096];
            if (pst_trainer_get_info(t, &ti) != PST_OK) return fail("trainer info");
            snprintf(ck, sizeof ck, "%s/checkpoint-%lld", out, (long long)ti.completed_steps);
            if (pst_trainer_save_checkpoint(t, ck) != PST_OK) rc = fail("saving the checkpoint");
            else fprintf(stderr, "interrupted: checkpoint %s written; continue with --resume auto\n", ck);
            rc = rc ? rc : 130;
        } else {
            printf("adapter saved to %s (adapter_config.json + adapter_model.safetensors)\n", out);
            if (prompt) {
                printf("after training> %s\n", prompt);
                rc = answer(m, prompt, raw, &gp);
            }
        }
        pst_trainer_free(t);
    }
    pst_llm_free(m);
    return rc;
}
