extension Architecture {
    /// Hugging Face's `LlamaForCausalLM` (SmolLM2, TinyLlama, Llama 2, ...): no biases, causal
    /// attention over the whole context, linear RoPE scaling; llama.cpp permutes its q/k rows.
    /// Names: transformers' modeling_llama.py and llama.cpp's convert_hf_to_gguf.py (LlamaModel).
    public static let llama = Architecture(
        name: "llama", hfModelTypes: ["llama"], hfArchitectures: ["LlamaForCausalLM"],
        projectionNames: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        projectionPaths: ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                          "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"],
        projectionBiases: [false, false, false, false, false, false, false],
        layerNorms: (input: "input_layernorm", postAttention: "post_attention_layernorm"),
        embeddingName: "model.embed_tokens.weight", finalNormName: "model.norm.weight", headName: "lm_head.weight",
        layerPrefix: "model.layers.",
        ggufGlobalNames: (embedding: "token_embd.weight", finalNorm: "output_norm.weight", head: "output.weight"),
        ggufLayerNames: [("input_layernorm", "attn_norm"), ("self_attn.q_proj", "attn_q"), ("self_attn.k_proj", "attn_k"),
                         ("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output"),
                         ("post_attention_layernorm", "ffn_norm"), ("mlp.gate_proj", "ffn_gate"), ("mlp.up_proj", "ffn_up"),
                         ("mlp.down_proj", "ffn_down")],
        ggufPermutesQK: true, ropeScalingTypes: ["linear"], attentionWindow: nil)
}
