//! Reading llama-family GGUF files (llama.cpp's format): the weights dequantised under Hugging
//! Face names, the model's shape, and its byte-level BPE tokenizer rebuilt from the vocabulary
//! and merges the file carries.

use std::collections::HashMap;
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::{Device, Tensor};
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::BPE;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::{AddedToken, Tokenizer};

use super::model::ModelConfig;
use super::EngineError;

/// What a GGUF file holds, in the form mynah keeps a base in.
pub struct Imported {
    pub config: ModelConfig,
    /// Hugging Face llama tensor names to `f32` tensors on the CPU.
    pub tensors: HashMap<String, Tensor>,
    pub tokenizer: Tokenizer,
    /// `general.name`, if the file says.
    pub name: Option<String>,
    /// `general.license`, if the file says.
    pub licence: Option<String>,
}

fn bad(path: &Path, reason: impl std::fmt::Display) -> EngineError {
    EngineError::Checkpoint { path: path.display().to_string(), reason: reason.to_string() }
}

/// Reads and dequantises a llama-architecture GGUF file with a GPT-2 style tokenizer.
pub fn read(path: &Path) -> Result<Imported, EngineError> {
    let mut file = std::fs::File::open(path)?;
    let content =
        gguf_file::Content::read(&mut file).map_err(|e| bad(path, format!("not a GGUF file: {e}")))?;
    let md = &content.metadata;
    let text = |key: &str| md.get(key).and_then(|v| v.to_string().ok()).cloned();
    let arch = text("general.architecture").unwrap_or_default();
    if arch != "llama" {
        return Err(bad(path, format!("architecture {arch:?} is not llama")));
    }
    let number = |key: &str| -> Result<usize, EngineError> {
        let v = md.get(key).ok_or_else(|| bad(path, format!("metadata {key} is missing")))?;
        v.to_u32()
            .map(|n| n as usize)
            .or_else(|_| v.to_u64().map(|n| n as usize))
            .map_err(|e| bad(path, format!("metadata {key}: {e}")))
    };
    let float =
        |key: &str, default: f64| md.get(key).and_then(|v| v.to_f32().ok()).map_or(default, f64::from);
    let tokens = string_array(md, "tokenizer.ggml.tokens").map_err(|e| bad(path, e))?;
    let heads = number("llama.attention.head_count")?;
    let kv_heads = number("llama.attention.head_count_kv").unwrap_or(heads);
    let mut config = ModelConfig {
        vocab_size: tokens.len(),
        hidden_size: number("llama.embedding_length")?,
        intermediate_size: number("llama.feed_forward_length")?,
        num_hidden_layers: number("llama.block_count")?,
        num_attention_heads: heads,
        num_key_value_heads: Some(kv_heads),
        max_position_embeddings: number("llama.context_length")?,
        rms_norm_eps: float("llama.attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta: float("llama.rope.freq_base", 10_000.0),
        tie_word_embeddings: !content.tensor_infos.contains_key("output.weight"),
        model_type: "llama".into(),
    };
    // mynah never needs long contexts; a base's 8 k positions would only cost rope tables.
    config.max_position_embeddings = config.max_position_embeddings.min(4096);
    config.validate()?;
    if heads == 0 || !config.hidden_size.is_multiple_of(heads) {
        return Err(bad(path, "the hidden size is not a multiple of the head count"));
    }

    let mut tensors = HashMap::new();
    let mut load =
        |gguf_name: &str, hf_name: String, permute_heads: Option<usize>| -> Result<(), EngineError> {
            let q = content
                .tensor(&mut file, gguf_name, &Device::Cpu)
                .map_err(|e| bad(path, format!("tensor {gguf_name}: {e}")))?;
            let mut t = q.dequantize(&Device::Cpu)?;
            if let Some(n_head) = permute_heads {
                t = unpermute(&t, n_head)?;
            }
            tensors.insert(hf_name, t);
            Ok(())
        };
    load("token_embd.weight", "model.embed_tokens.weight".into(), None)?;
    load("output_norm.weight", "model.norm.weight".into(), None)?;
    if !config.tie_word_embeddings {
        load("output.weight", "lm_head.weight".into(), None)?;
    }
    for i in 0..config.num_hidden_layers {
        let hf = |part: &str| format!("model.layers.{i}.{part}.weight");
        let g = |part: &str| format!("blk.{i}.{part}.weight");
        load(&g("attn_norm"), hf("input_layernorm"), None)?;
        load(&g("attn_q"), hf("self_attn.q_proj"), Some(heads))?;
        load(&g("attn_k"), hf("self_attn.k_proj"), Some(kv_heads))?;
        load(&g("attn_v"), hf("self_attn.v_proj"), None)?;
        load(&g("attn_output"), hf("self_attn.o_proj"), None)?;
        load(&g("ffn_norm"), hf("post_attention_layernorm"), None)?;
        load(&g("ffn_gate"), hf("mlp.gate_proj"), None)?;
        load(&g("ffn_up"), hf("mlp.up_proj"), None)?;
        load(&g("ffn_down"), hf("mlp.down_proj"), None)?;
    }
    let tokenizer = tokenizer(md, tokens).map_err(|e| bad(path, e))?;
    Ok(Imported { config, tensors, tokenizer, name: text("general.name"), licence: text("general.license") })
}

/// llama.cpp's converter reorders the rows of the query and key projections so that its rotary
/// embedding can rotate adjacent pairs; this puts them back in Hugging Face's half-split order.
fn unpermute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, out / n_head / 2, 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

/// The inverse of [`unpermute`], as llama.cpp's converter applies it (tests write GGUF files).
#[cfg(test)]
pub(crate) fn permute(w: &Tensor, n_head: usize) -> candle_core::Result<Tensor> {
    let (out, inp) = w.dims2()?;
    w.reshape((n_head, 2, out / n_head / 2, inp))?.transpose(1, 2)?.contiguous()?.reshape((out, inp))
}

fn string_array(md: &HashMap<String, Value>, key: &str) -> Result<Vec<String>, String> {
    let values = md.get(key).ok_or(format!("metadata {key} is missing"))?;
    let values = values.to_vec().map_err(|e| format!("metadata {key}: {e}"))?;
    values.iter().map(|v| v.to_string().cloned().map_err(|e| format!("metadata {key}: {e}"))).collect()
}

/// Rebuilds the Hugging Face tokenizer of a GPT-2 style (byte-level BPE) GGUF vocabulary.
fn tokenizer(md: &HashMap<String, Value>, tokens: Vec<String>) -> Result<Tokenizer, String> {
    let model = md.get("tokenizer.ggml.model").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    if model != "gpt2" {
        return Err(format!(
            "tokenizer {model:?} is not supported: mynah reads byte-level BPE (tokenizer.ggml.model = gpt2) \
             vocabularies; import the Hugging Face layout of this model instead"
        ));
    }
    let merges: Vec<(String, String)> = string_array(md, "tokenizer.ggml.merges")?
        .into_iter()
        .map(|m| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or(format!("merge {m:?} has no space"))
        })
        .collect::<Result<_, _>>()?;
    let types: Vec<i64> = match md.get("tokenizer.ggml.token_type").map(Value::to_vec) {
        Some(Ok(v)) => v.iter().map(|t| t.to_i32().map(i64::from).unwrap_or(1)).collect(),
        _ => vec![1; tokens.len()],
    };
    let vocab: tokenizers::models::bpe::Vocab =
        tokens.iter().enumerate().map(|(i, t)| (t.clone(), i as u32)).collect();
    let bpe =
        BPE::builder().vocab_and_merges(vocab, merges).build().map_err(|e| format!("tokenizer: {e}"))?;
    let mut tok = Tokenizer::new(bpe);
    let byte_level = ByteLevel::new(false, true, true);
    let pre = md.get("tokenizer.ggml.pre").and_then(|v| v.to_string().ok()).cloned().unwrap_or_default();
    // SmolLM's (and several others') pre-tokenizer splits digits one by one before GPT-2's regex.
    if ["smollm", "starcoder", "refact", "qwen2", "llama3", "llama-bpe"].contains(&pre.as_str()) {
        tok.with_pre_tokenizer(Some(Sequence::new(vec![
            PreTokenizerWrapper::Digits(Digits::new(true)),
            PreTokenizerWrapper::ByteLevel(byte_level),
        ])));
    } else {
        tok.with_pre_tokenizer(Some(byte_level));
    }
    tok.with_decoder(Some(ByteLevelDecoder::new(false, true, true)));
    // Control tokens (type 3) are matched whole and never split.
    let specials: Vec<AddedToken> = tokens
        .iter()
        .zip(types.iter().chain(std::iter::repeat(&1)))
        .filter(|(_, &t)| t == 3)
        .map(|(s, _)| AddedToken::from(s.clone(), true))
        .collect();
    tok.add_special_tokens(specials).map_err(|e| format!("tokenizer: {e}"))?;
    Ok(tok)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::quantized::{GgmlDType, QTensor};

    #[test]
    fn unpermute_undoes_llama_cpps_row_order() {
        let w = Tensor::arange(0f32, 8.0 * 3.0, &Device::Cpu).unwrap().reshape((8, 3)).unwrap();
        let back = unpermute(&permute(&w, 2).unwrap(), 2).unwrap();
        assert_eq!(back.to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
        assert_ne!(permute(&w, 2).unwrap().to_vec2::<f32>().unwrap(), w.to_vec2::<f32>().unwrap());
    }

    #[test]
    fn a_file_of_another_architecture_or_tokenizer_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.gguf");
        let t = QTensor::quantize(
            &Tensor::zeros(32, candle_core::DType::F32, &Device::Cpu).unwrap(),
            GgmlDType::F32,
        )
        .unwrap();
        let arch = Value::String("gpt-neox".into());
        let mut f = std::fs::File::create(&path).unwrap();
        gguf_file::write(&mut f, &[("general.architecture", &arch)], &[("x", &t)]).unwrap();
        let err = read(&path).err().unwrap().to_string();
        assert!(err.contains("not llama"), "{err}");
        std::fs::write(&path, b"not a gguf").unwrap();
        assert!(read(&path).err().unwrap().to_string().contains("not a GGUF file"));
    }
}
