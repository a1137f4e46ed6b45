use std::collections::HashMap;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use candle_nn::VarBuilder;

use super::*;
use crate::engine::model::Model;
use crate::engine::train;

/// A tiny llama with grouped-query attention (4 heads, 2 key/value heads).
fn tiny_config(vocab: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: vocab,
        hidden_size: 16,
        intermediate_size: 32,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: Some(2),
        max_position_embeddings: 64,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        tie_word_embeddings: true,
        model_type: "llama".into(),
    }
}

/// The byte alphabet, a few merges and one control token: a GPT-2 style vocabulary.
fn vocabulary() -> (Vec<String>, Vec<String>) {
    let mut alphabet: Vec<char> =
        tokenizers::pre_tokenizers::byte_level::ByteLevel::alphabet().into_iter().collect();
    alphabet.sort();
    let mut tokens = vec!["<|endoftext|>".to_string()];
    tokens.extend(alphabet.iter().map(|c| c.to_string()));
    let merges = ["h e", "Ġ t", "Ġt he", "l l"];
    tokens.extend(merges.iter().map(|m| m.replace(' ', "")));
    (tokens, merges.iter().map(|m| m.to_string()).collect())
}

/// Writes `tensors` (Hugging Face names) as llama.cpp would: GGUF names, permuted query and
/// key rows, the vocabulary in the metadata.
fn write_gguf(path: &Path, cfg: &ModelConfig, tensors: &HashMap<String, Tensor>) {
    let (tokens, merges) = vocabulary();
    let mut q = Vec::new();
    let mut put = |gguf_name: String, hf: &str, heads: Option<usize>| {
        let t = &tensors[hf];
        let t = match heads {
            Some(h) => gguf::permute(t, h).unwrap(),
            None => t.clone(),
        };
        q.push((gguf_name, QTensor::quantize(&t, GgmlDType::F32).unwrap()));
    };
    put("token_embd.weight".into(), "model.embed_tokens.weight", None);
    put("output_norm.weight".into(), "model.norm.weight", None);
    for i in 0..cfg.num_hidden_layers {
        let hf = |p: &str| format!("model.layers.{i}.{p}.weight");
        for (g, h, heads) in [
            ("attn_norm", "input_layernorm", None),
            ("attn_q", "self_attn.q_proj", Some(cfg.num_attention_heads)),
            ("attn_k", "self_attn.k_proj", Some(cfg.kv_heads())),
            ("attn_v", "self_attn.v_proj", None),
            ("attn_output", "self_attn.o_proj", None),
            ("ffn_norm", "post_attention_layernorm", None),
            ("ffn_gate", "mlp.gate_proj", None),
            ("ffn_up", "mlp.up_proj", None),
            ("ffn_down", "mlp.down_proj", None),
        ] {
            put(format!("blk.{i}.{g}.weight"), &hf(h), heads);
        }
    }
    let strings = |v: &[String]| Value::Array(v.iter().map(|s| Value::String(s.clone())).collect());
    let types = Value::Array(
        tokens.iter().enumerate().map(|(i, _)| Value::I32(if i == 0 { 3 } else { 1 })).collect(),
    );
    let meta: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("llama".into())),
        ("general.name", Value::String("Tiny Chat".into())),
        ("general.license", Value::String("apache-2.0".into())),
        ("llama.block_count", Value::U32(cfg.num_hidden_layers as u32)),
        ("llama.context_length", Value::U32(cfg.max_position_embeddings as u32)),
        ("llama.embedding_length", Value::U32(cfg.hidden_size as u32)),
        ("llama.feed_forward_length", Value::U32(cfg.intermediate_size as u32)),
        ("llama.attention.head_count", Value::U32(cfg.num_attention_heads as u32)),
        ("llama.attention.head_count_kv", Value::U32(cfg.kv_heads() as u32)),
        ("llama.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("smollm".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        ("tokenizer.ggml.merges", strings(&merges)),
        ("tokenizer.ggml.token_type", types),
    ];
    let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
    let q_refs: Vec<(&str, &QTensor)> = q.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(path).unwrap();
    gguf_file::write(&mut f, &meta_refs, &q_refs).unwrap();
}

/// Random weights for `cfg` under Hugging Face names, with query and key projections large
/// enough that attention depends on them (at initial scale it is nearly uniform).
fn random_weights(cfg: &ModelConfig) -> HashMap<String, Tensor> {
    let (_, varmap) = train::init_model(cfg, &Device::Cpu, 0).unwrap();
    let data = varmap.data().lock().unwrap();
    let scale = |k: &str| if k.contains("q_proj") || k.contains("k_proj") { 40.0 } else { 1.0 };
    data.iter().map(|(k, v)| (k.clone(), (v.as_tensor() * scale(k)).unwrap())).collect()
}

fn logits(dir: &Path, ids: &[u32]) -> Vec<f32> {
    let cfg = load_config(dir).unwrap();
    let vb = unsafe {
        VarBuilder::from_mmaped_safetensors(
            &[dir.join("model.safetensors")],
            candle_core::DType::F32,
            &Device::Cpu,
        )
    }
    .unwrap();
    let model = Model::new(&cfg, vb).unwrap();
    let mut cache = model.new_cache();
    model.forward_cached(ids, &mut cache).unwrap().to_vec1().unwrap()
}

#[test]
fn a_gguf_file_and_its_hugging_face_original_import_to_the_same_model() {
    let (tokens, _) = vocabulary();
    let cfg = tiny_config(tokens.len());
    let weights = random_weights(&cfg);
    let work = tempfile::tempdir().unwrap();
    let models = tempfile::tempdir().unwrap();
    let gguf_path = work.path().join("Tiny-Chat.Q8.gguf");
    write_gguf(&gguf_path, &cfg, &weights);

    let from_gguf = import(models.path(), &gguf_path, None, None).unwrap();
    assert_eq!(from_gguf.manifest.name, "tiny-chat.q8");
    assert_eq!(from_gguf.manifest.format, Format::Gguf);
    assert_eq!(from_gguf.manifest.licence, "apache-2.0", "the file's declared licence");
    assert_eq!(from_gguf.manifest.parameters, cfg.params());
    assert_eq!(from_gguf.manifest.sha256.len(), 64);

    // The Hugging Face original: the same weights unpermuted, the tokenizer the import rebuilt.
    let hf = work.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    candle_core::safetensors::save(&weights, hf.join("model.safetensors")).unwrap();
    std::fs::write(hf.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::copy(from_gguf.path.join("tokenizer.json"), hf.join("tokenizer.json")).unwrap();
    let from_hf = import(models.path(), &hf, Some("tiny-hf"), Some("MIT")).unwrap();
    assert_eq!((from_hf.manifest.format, from_hf.manifest.licence.as_str()), (Format::Hf, "MIT"));

    let ids = [5u32, 70, 3, 200, 17, 9];
    let (a, b) = (logits(&from_gguf.path, &ids), logits(&from_hf.path, &ids));
    let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(worst < 5e-3, "the GGUF import's logits differ by {worst}: query/key rows out of order?");

    // The rebuilt tokenizer splits digits one by one and applies the merges, like SmolLM's.
    let tok = tokenizers::Tokenizer::from_file(from_gguf.path.join("tokenizer.json")).unwrap();
    let enc = tok.encode("hello the 42<|endoftext|>", false).unwrap();
    assert_eq!(enc.get_tokens(), ["he", "ll", "o", "Ġthe", "Ġ", "4", "2", "<|endoftext|>"]);
    assert_eq!(tok.decode(enc.get_ids(), true).unwrap(), "hello the 42");

    // Newest import first; names are unique; removal takes it off the list.
    let names: Vec<String> = list(models.path()).into_iter().map(|b| b.manifest.name).collect();
    assert_eq!(names, ["tiny-hf", "tiny-chat.q8"]);
    assert!(matches!(import(models.path(), &hf, Some("tiny-hf"), None), Err(BaseError::Exists(_))));
    assert_eq!(resolve(models.path(), &Choice::Auto).unwrap().unwrap().manifest.name, "tiny-hf");
    assert_eq!(
        resolve(models.path(), &"tiny-chat.q8".parse().unwrap()).unwrap().unwrap().path,
        from_gguf.path
    );
    assert_eq!(resolve(models.path(), &Choice::None).unwrap(), None);
    remove(models.path(), "tiny-hf").unwrap();
    assert!(matches!(resolve(models.path(), &"tiny-hf".parse().unwrap()), Err(BaseError::Missing(_))));
    assert_eq!(list(models.path()).len(), 1);
    let leftovers: Vec<_> =
        std::fs::read_dir(models.path().join(DIR)).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(leftovers.len(), 1, "no staging or removal directories are left: {leftovers:?}");
}

#[test]
fn bad_sources_and_names_are_refused_and_leave_nothing_behind() {
    let models = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    // A directory without weights.
    std::fs::write(work.path().join("config.json"), "{}").unwrap();
    let err = import(models.path(), work.path(), Some("x"), None).err().unwrap().to_string();
    assert!(err.contains("model.safetensors is missing"), "{err}");
    // A file that is not GGUF.
    let junk = work.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    assert!(import(models.path(), &junk, None, None).is_err());
    // Weights that do not fit the config.
    let (tokens, _) = vocabulary();
    let cfg = tiny_config(tokens.len());
    let hf = work.path().join("hf");
    std::fs::create_dir(&hf).unwrap();
    let mut weights = random_weights(&cfg);
    weights.remove("model.layers.1.mlp.up_proj.weight");
    candle_core::safetensors::save(&weights, hf.join("model.safetensors")).unwrap();
    std::fs::write(hf.join("config.json"), serde_json::to_vec(&cfg).unwrap()).unwrap();
    std::fs::write(hf.join("tokenizer.json"), "{").unwrap();
    assert!(import(models.path(), &hf, Some("y"), None)
        .err()
        .unwrap()
        .to_string()
        .contains("tokenizer.json"));
    for bad in ["", "../up", ".hidden", "a b", &"x".repeat(65)] {
        assert!(matches!(bad.parse::<Choice>(), Err(BaseError::BadName(_))) || bad.is_empty(), "{bad:?}");
        assert!(
            matches!(import(models.path(), &junk, Some(bad), None), Err(BaseError::BadName(_))),
            "{bad:?}"
        );
    }
    assert_eq!("".parse::<Choice>().unwrap(), Choice::Auto);
    assert!(list(models.path()).is_empty());
    let left: Vec<_> =
        std::fs::read_dir(models.path().join(DIR)).unwrap().flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "{left:?}");
}

/// What `base fetch` checks before downloading is what `import` checks after: a valid name whose
/// directory is free, even when that directory is not a whole base (a left-over import).
#[test]
fn a_new_base_name_must_be_valid_and_free() {
    let models = tempfile::tempdir().unwrap();
    assert!(check_new_name(models.path(), "free").is_ok());
    assert!(matches!(check_new_name(models.path(), "../up"), Err(BaseError::BadName(_))));
    std::fs::create_dir_all(models.path().join(DIR).join("taken")).unwrap();
    assert!(list(models.path()).is_empty(), "not a whole base");
    assert!(matches!(check_new_name(models.path(), "taken"), Err(BaseError::Exists(n)) if n == "taken"));
    let junk = models.path().join("junk.gguf");
    std::fs::write(&junk, b"GGUF but not really").unwrap();
    assert!(matches!(import(models.path(), &junk, Some("taken"), None), Err(BaseError::Exists(_))));
}
