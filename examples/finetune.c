/* QLoRA fine-tuning of a real LLM from C, no Python: load -> train -> save -> generate.
 *
 *   cc -std=c11 finetune.c $(pkg-config --cflags --libs peftswift) -o finetune
 *   ./finetune MODEL.gguf DATA.jsonl OUT_DIR [STEPS]
 *
 * MODEL is a Llama-architecture GGUF file (e.g. SmolLM2-135M-Instruct) or a Hugging Face
 * checkpoint directory. Its projections are quantized to NF4 + double quantization as it loads;
 * a LoRA adapter (r 16 on all projections) is trained on DATA (JSON Lines of
 * {"instruction": ..., "response": ...}; a .txt file is trained as plain text) with AdamW whose
 * state is paged under a 64 MiB budget; the adapter is saved to OUT_DIR as a PEFT directory
 * (PeftModel.from_pretrained loads it), and the model answers a prompt before and after. */
#include <peftswift.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CHECK(call)                                                              \
    do {                                                                         \
        if ((call) != PST_OK) {                                                  \
            fprintf(stderr, "%s failed: %s\n", #call, pst_last_error());         \
            exit(1);                                                             \
        }                                                                        \
    } while (0)

/* Streams each generated token's bytes as it is chosen. */
static int32_t print_token(int32_t token, const char *bytes, size_t n, void *user) {
    (void)token; (void)user;
    fwrite(bytes, 1, n, stdout);
    fflush(stdout);
    return 0; /* go on */
}

static void ask(pst_llm *model, const char *question, int with_adapter) {
    int32_t prompt[512];
    int64_t n = 0, generated = 0;
    CHECK(pst_llm_chat_prompt(model, question, NULL, prompt, 512, &n));
    pst_generate_params gp;
    CHECK(pst_generate_params_init(&gp));
    gp.max_new_tokens = 40;           /* greedy, stops at <|im_end|> */
    gp.disable_adapters = !with_adapter;
    printf("%s> %s\n", with_adapter ? "fine-tuned" : "base model", question);
    CHECK(pst_llm_generate(model, prompt, (size_t)n, &gp, print_token, NULL, NULL, 0, &generated));
    printf("\n");
}

/* Called after every optimizer step; returning nonzero would stop training. */
static int32_t on_step(const pst_train_progress *p, void *user) {
    (void)user;
    printf("step %3lld/%lld  loss %.3f  lr %.1e  %5.0f tokens/s  RSS %lld MiB\n", (long long)p->step,
           (long long)p->total_steps, p->loss, p->learning_rate, p->tokens_per_second,
           (long long)(p->resident_bytes >> 20));
    fflush(stdout);
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: %s MODEL DATA OUT_DIR [STEPS]\n", argv[0]);
        return 2;
    }
    if (pst_abi_version() != PST_ABI_VERSION) {
        fprintf(stderr, "peftswift.h (ABI %d) and libpeftswift.so (ABI %d) disagree\n", PST_ABI_VERSION, pst_abi_version());
        return 1;
    }
    const char *model_path = argv[1], *data = argv[2], *out = argv[3];
    const char *question = "What is peftswift?";

    /* 1. Load: NF4 + double quantization of every projection, as the tensors load. */
    pst_llm_load_params lp;
    CHECK(pst_llm_load_params_init(&lp));
    pst_llm *model = NULL;
    CHECK(pst_llm_load(model_path, &lp, &model));
    pst_llm_info info = {.struct_size = sizeof info};
    CHECK(pst_llm_get_info(model, &info));
    printf("%s: %d layers, hidden %d, vocab %d, %.1fM parameters, frozen base %.0f MiB\n", model_path, info.layers,
           info.hidden, info.vocab, (double)info.parameter_count / 1e6, (double)info.base_bytes / (1 << 20));

    /* 2. Train a LoRA adapter (QLoRA): paged AdamW, cosine schedule with warm-up. */
    pst_trainer_params tp;
    CHECK(pst_trainer_params_init(&tp));
    size_t len = strlen(data);
    tp.data_format = len > 4 && strcmp(data + len - 4, ".txt") == 0 ? PST_DATA_TEXT : PST_DATA_JSONL;
    tp.seq_len = 96;
    tp.batch_size = 4;
    tp.steps = argc > 4 ? atoll(argv[4]) : 30;
    tp.learning_rate = 1.5e-3;
    tp.warmup_steps = 2;
    tp.lora_r = 16;
    tp.lora_alpha = 32;
    tp.paged_budget_bytes = 64 << 20;
    tp.output_dir = out; /* the adapter is saved here after the last step */
    pst_trainer *trainer = NULL;
    CHECK(pst_trainer_create(model, &data, 1, &tp, &trainer));
    pst_trainer_info ti = {.struct_size = sizeof ti};
    CHECK(pst_trainer_get_info(trainer, &ti));
    printf("%lld training sequences of %d tokens, %lld trainable parameters\n", (long long)ti.rows, ti.seq_len,
           (long long)ti.trainable_parameters);
    ask(model, question, 0);
    CHECK(pst_trainer_train(trainer, on_step, NULL));
    pst_trainer_free(trainer); /* the trained adapter stays on the model */
    printf("adapter saved to %s\n", out);

    /* 3. Generate with the adapter, and without it for comparison. */
    ask(model, question, 1);
    pst_llm_free(model);
    return 0;
}
