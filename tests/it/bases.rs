//! Pretrained bases through the binary: import, list, a training that fine-tunes from the
//! installed base and replies from it, `MYNAH_BASE=none`, removal.

use std::path::Path;
use std::process::Command;

use candle_core::{DType, Device, Tensor};
use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
use tokenizers::models::TrainerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;

use crate::support::mynah;

fn ok(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{:?}: {}",
        cmd.get_args().collect::<Vec<_>>(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A tiny "pretrained" llama in Hugging Face layout: a byte-level BPE tokenizer without mynah's
/// framing tokens and random weights.
fn write_tiny_base(dir: &Path, texts: &[String]) {
    std::fs::create_dir_all(dir).unwrap();
    let mut tok = tokenizers::Tokenizer::new(BPE::default());
    tok.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tok.with_decoder(Some(ByteLevel::new(false, true, true)));
    let mut trainer: TrainerWrapper = BpeTrainerBuilder::new()
        .show_progress(false)
        .vocab_size(400)
        .special_tokens(vec![tokenizers::AddedToken::from("<|endoftext|>", true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    tok.train(&mut trainer, texts.iter()).unwrap();
    tok.save(dir.join("tokenizer.json"), false).unwrap();
    let vocab = tok.get_vocab_size(true);
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
        "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": true, "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut tensors = std::collections::HashMap::new();
    let mut put = |name: String, shape: &[usize], ones: bool| {
        let t = if ones {
            Tensor::ones(shape, DType::F32, &Device::Cpu).unwrap()
        } else {
            Tensor::randn(0f32, 0.05, shape, &Device::Cpu).unwrap()
        };
        tensors.insert(name, t.to_dtype(DType::BF16).unwrap());
    };
    put("model.embed_tokens.weight".into(), &[vocab, 32], false);
    put("model.norm.weight".into(), &[32], true);
    for i in 0..2 {
        let l = |p: &str| format!("model.layers.{i}.{p}.weight");
        put(l("input_layernorm"), &[32], true);
        put(l("post_attention_layernorm"), &[32], true);
        put(l("self_attn.q_proj"), &[32, 32], false);
        put(l("self_attn.k_proj"), &[16, 32], false);
        put(l("self_attn.v_proj"), &[16, 32], false);
        put(l("self_attn.o_proj"), &[32, 32], false);
        put(l("mlp.gate_proj"), &[64, 32], false);
        put(l("mlp.up_proj"), &[64, 32], false);
        put(l("mlp.down_proj"), &[32, 64], false);
    }
    candle_core::safetensors::save(&tensors, dir.join("model.safetensors")).unwrap();
}

#[test]
fn a_guild_fine_tunes_from_the_installed_base_and_replies_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = dir.path().join("sample.jsonl");
    std::fs::write(&corpus, mynah::playground::SAMPLE).unwrap();
    ok(mynah(dir.path()).args(["corpus", "import"]).arg(&corpus));

    // Unset MYNAH_BASE: mynah's embedded base is the starting point until an operator imports one.
    let auto = || {
        let mut cmd = mynah(dir.path());
        cmd.env_remove("MYNAH_BASE");
        cmd
    };
    let out = ok(mynah(dir.path()).args(["base", "list"]));
    assert!(out.contains("no base installed") && out.contains("MYNAH_BASE=none"), "{out}");
    let out = ok(auto().args(["base", "list"]));
    assert!(out.starts_with("* mynah-base-s ") && out.contains("CC-BY-4.0 AND MIT"), "{out}");
    let texts: Vec<String> = mynah::playground::SAMPLE
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| {
            v["content"].as_str().map(|c| format!("{}: {c}", v["author"].as_str().unwrap_or("x")))
        })
        .collect();
    let source = dir.path().join("hf-tiny");
    write_tiny_base(&source, &texts);
    let out =
        ok(mynah(dir.path()).args(["base", "import", "--name", "tiny", "--licence", "MIT"]).arg(&source));
    assert!(out.starts_with("installed base tiny ("), "{out}");
    let out = ok(auto().args(["base", "list"]));
    assert!(out.starts_with("* tiny ") && out.contains("MIT") && out.contains("hf"), "{out}");

    // The imported base takes precedence over the embedded one.
    ok(auto().args(["train", "--preset", "tiny", "--epochs", "1", "--max-minutes", "0.1"]));
    let status: serde_json::Value =
        serde_json::from_str(&ok(mynah(dir.path()).args(["stats", "--json"]))).unwrap();
    assert_eq!(status["mode"], "model", "{status}");
    assert_eq!(status["model"]["preset"], "fine-tuned from base tiny", "{status}");
    let run = dir.path().join("models/fcc-city").join(status["model"]["run"].as_str().unwrap());
    let tokenizer = std::fs::read_to_string(run.join("tokenizer.json")).unwrap();
    assert!(!tokenizer.contains("<|msg|>"), "the base's tokenizer, without mynah's framing tokens");
    let reply = ok(auto().args(["reply", "--guild", "fcc-city", "anyone around?"]));
    assert!(reply.trim().lines().count() <= 1, "one message, one line: {reply:?}");

    // MYNAH_BASE=none trains from scratch; a name that cannot be a base's stops start-up.
    ok(mynah(dir.path()).args(["train", "--preset", "tiny", "--epochs", "1"]));
    let status: serde_json::Value =
        serde_json::from_str(&ok(mynah(dir.path()).args(["stats", "--json"]))).unwrap();
    assert_eq!(status["model"]["preset"], "tiny", "{status}");
    let out = mynah(dir.path()).env("MYNAH_BASE", "../x").args(["base", "list"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));

    ok(mynah(dir.path()).args(["base", "remove", "tiny"]));
    let out = ok(auto().args(["base", "list"]));
    assert!(out.starts_with("* mynah-base-s ") && !out.contains("tiny"), "{out}");
    // A guild with no imported base fine-tunes the embedded one (every weight: it is small).
    ok(auto().args(["train", "--epochs", "1", "--max-minutes", "0.05"]));
    let status: serde_json::Value = serde_json::from_str(&ok(auto().args(["stats", "--json"]))).unwrap();
    assert_eq!(status["model"]["preset"], "fine-tuned from base mynah-base-s", "{status}");
    let run = dir.path().join("models/fcc-city").join(status["model"]["run"].as_str().unwrap());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run.join("meta.json")).unwrap()).unwrap();
    assert!(meta["lora"].is_null(), "a small base is fine-tuned whole: {meta}");
    let reply = ok(auto().args(["reply", "--guild", "fcc-city", "anyone around?"]));
    assert!(!reply.trim().is_empty() && reply.trim().lines().count() <= 1, "{reply:?}");
    let out = mynah(dir.path()).args(["base", "remove", "tiny"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no base named \"tiny\""));
}
