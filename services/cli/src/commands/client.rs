//! The query commands: gRPC clients of `loupe serve` (search, show, text, label, dictionaries).

use std::io::IsTerminal;

use anyhow::Context;
use loupe_schema::proto::v1 as pb;
use loupe_schema::proto::v1::features_client::FeaturesClient;
use std::path::PathBuf;

use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::output::{print_json, printable};

#[derive(clap::Args, Clone)]
pub struct ServerArgs {
    /// Address of `loupe serve` (https://... for a server with TLS).
    #[arg(long, env = "LOUPE_SERVER", default_value = "http://127.0.0.1:50051")]
    pub server: String,
    #[command(flatten)]
    pub credentials: Credentials,
    /// Print the response as JSON.
    #[arg(long)]
    pub json: bool,
}

/// How the client proves who it is and checks whom it talks to.
#[derive(clap::Args, Clone, Default)]
pub struct Credentials {
    /// Bearer token for a server that checks tokens (from `loupe token create`).
    #[arg(long, env = "LOUPE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// With https://: the CA certificate (PEM) that signed the server's certificate
    /// (default: the system's roots).
    #[arg(long, env = "LOUPE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// With https://: this client's certificate and key (PEM), for a server that asks for
    /// one (mutual TLS).
    #[arg(long, env = "LOUPE_CLIENT_CERT", requires = "client_key")]
    pub client_cert: Option<PathBuf>,
    #[arg(long, env = "LOUPE_CLIENT_KEY", requires = "client_cert")]
    pub client_key: Option<PathBuf>,
}

/// A connection to `loupe serve` that sends the caller's token with every call.
pub type Conn = InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer <token>` to each call (nothing without a token).
#[derive(Clone)]
pub struct BearerToken(Option<MetadataValue<Ascii>>);

impl Interceptor for BearerToken {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

#[derive(clap::Args)]
pub struct SearchArgs {
    /// Words, "a phrase", prefix*, a AND b, -word, label:word.
    pub query: String,
    #[arg(long)]
    pub dictionary: Option<String>,
    #[arg(long)]
    pub layer: Option<u32>,
    #[arg(long)]
    pub min_density: Option<f64>,
    #[arg(long)]
    pub max_density: Option<f64>,
    #[arg(long, default_value_t = 10)]
    pub limit: u32,
    #[arg(long, default_value_t = 0)]
    pub offset: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct ShowArgs {
    /// DICTIONARY/FEATURE, e.g. blocks.9.hook_resid_post-topk-4608/123.
    pub feature: String,
    /// Top examples shown.
    #[arg(long, default_value_t = 8)]
    pub examples: u32,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct TextArgs {
    pub text: String,
    /// Features per token.
    #[arg(long, default_value_t = 3)]
    pub k: u32,
    #[arg(long)]
    pub dictionary: Vec<String>,
    /// Leave out features denser than this in the index (e.g. 0.1).
    #[arg(long)]
    pub max_density: Option<f64>,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(clap::Args)]
pub struct LabelArgs {
    /// DICTIONARY/FEATURE.
    pub feature: String,
    /// The label (empty clears it).
    pub label: String,
    /// Who labels, recorded with the label (default: $USER).
    #[arg(long, env = "USER")]
    pub author: Option<String>,
    #[command(flatten)]
    pub server: ServerArgs,
}

pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread().enable_all().build()?)
}

async fn connect(server: &ServerArgs) -> anyhow::Result<FeaturesClient<Conn>> {
    Ok(FeaturesClient::new(channel(&server.server, &server.credentials).await?))
}

/// A connection to `loupe serve` at `server`: TLS for https:// (checked against --tls-ca,
/// else the system's roots), the token on every call.
pub async fn channel(server: &str, credentials: &Credentials) -> anyhow::Result<Conn> {
    let mut endpoint = Channel::from_shared(server.to_string()).with_context(|| format!("--server {server:?} is not a URL (e.g. http://127.0.0.1:50051)"))?;
    if server.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        tls = match &credentials.tls_ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(loupe_query::access::tls::read_pem(ca, "--tls-ca", "CERTIFICATE")?)),
            None => tls.with_native_roots(),
        };
        if let (Some(cert), Some(key)) = (&credentials.client_cert, &credentials.client_key) {
            let cert = loupe_query::access::tls::read_pem(cert, "--client-cert", "CERTIFICATE")?;
            let key = loupe_query::access::tls::read_pem(key, "--client-key", "PRIVATE KEY")?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).context("TLS settings")?;
    } else if credentials.tls_ca.is_some() || credentials.client_cert.is_some() {
        anyhow::bail!("--tls-ca and --client-cert need an https:// --server (it is {server})");
    }
    let token = match &credentials.token {
        Some(token) => Some(format!("Bearer {}", token.trim()).parse().context("--token: a token is printable ASCII (as `loupe token create` prints it)")?),
        None => None,
    };
    // The transport error's causes (refused, TLS) follow on the same line (main's one_message).
    let channel = endpoint.connect().await.with_context(|| format!("cannot reach loupe serve at {server} (start it with `loupe serve`, or set --server / LOUPE_SERVER)"))?;
    Ok(InterceptedService::new(channel, BearerToken(token)))
}

/// A gRPC status as an error a person can act on.
pub fn status(e: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", e.message(), e.code())
}

pub fn parse_feature(text: &str) -> anyhow::Result<pb::FeatureRef> {
    let (dictionary_id, feature) = text.rsplit_once('/').with_context(|| format!("{text:?}: expected DICTIONARY/FEATURE, e.g. my-sae/123"))?;
    let feature = feature.parse().with_context(|| format!("{text:?}: the feature index must be a number"))?;
    Ok(pb::FeatureRef { dictionary_id: dictionary_id.to_string(), feature })
}

pub fn dictionaries(args: ServerArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args).await?;
        let r = client.list_dictionaries(pb::ListDictionariesRequest {}).await.map_err(status)?.into_inner();
        if args.json {
            return print_json(&r);
        }
        println!("store generation {}", r.store_generation);
        for d in &r.dictionaries {
            let manifest: serde_json::Value = serde_json::from_str(&d.manifest_json).unwrap_or_default();
            println!("{}  {} {} d_sae={} tokens={} {}", d.dictionary_id, d.hook, d.architecture, d.d_sae, manifest["tokens_seen"], if d.loaded { "(runs on text)" } else { "(index only)" });
        }
        Ok(())
    })
}

pub fn search(args: SearchArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::SearchFeaturesRequest {
            query: args.query.clone(),
            dictionary_id: args.dictionary.clone(),
            hook: None,
            layer: args.layer,
            min_density: args.min_density,
            max_density: args.max_density,
            offset: args.offset,
            limit: args.limit,
        };
        let r = client.search_features(request).await.map_err(status)?.into_inner();
        if args.server.json {
            return print_json(&r);
        }
        let about = if r.total_is_estimate { "about " } else { "" };
        println!("{about}{} features match {:?}", r.total, args.query);
        let color = std::io::stdout().is_terminal();
        for h in &r.hits {
            let f = h.feature.clone().unwrap_or_default();
            let mut snippet = String::new();
            let mut at = 0;
            for range in &h.highlights {
                let (start, end) = (range.start as usize, range.end as usize);
                if start < at || end > h.snippet.len() || !h.snippet.is_char_boundary(start) || !h.snippet.is_char_boundary(end) {
                    continue;
                }
                snippet.push_str(&printable(&h.snippet[at..start].replace('\n', " … ")));
                let word = printable(&h.snippet[start..end]);
                snippet.push_str(&if color { format!("\x1b[1;33m{word}\x1b[0m") } else { format!("[{word}]") });
                at = end;
            }
            snippet.push_str(&printable(&h.snippet[at..].replace('\n', " … ")));
            println!(
                "{}/{}  score {:.2}  max {:.2}  density {:.2e}{}\n    {}",
                f.dictionary_id,
                f.feature,
                h.score,
                h.max_activation,
                h.density,
                h.label.as_ref().map(|l| format!("  \"{}\"", printable(l))).unwrap_or_default(),
                // The snippet may span several top examples' contexts, one per line.
                snippet
            );
        }
        Ok(())
    })
}

/// A token on a background whose strength follows the activation.
fn paint(token: &str, activation: f32, max: f32, color: bool) -> String {
    let shown = printable(token).into_owned();
    if activation <= 0.0 {
        return shown;
    }
    if !color {
        return format!("[{shown}]");
    }
    const SCALE: [u8; 6] = [230, 229, 222, 215, 208, 202];
    let level = ((activation / max.max(1e-9)) * (SCALE.len() - 1) as f32).round() as usize;
    format!("\x1b[48;5;{}m\x1b[30m{shown}\x1b[0m", SCALE[level.min(SCALE.len() - 1)])
}

pub fn show(args: ShowArgs) -> anyhow::Result<()> {
    let feature = parse_feature(&args.feature)?;
    runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::GetFeatureRequest { feature: Some(feature), max_top_examples: args.examples, max_interval_examples: 2, include: None };
        let d = client.get_feature(request).await.map_err(status)?.into_inner().dashboard.context("empty dashboard")?;
        if args.server.json {
            return print_json(&d);
        }
        let color = std::io::stdout().is_terminal();
        println!("{}  ({}){}", args.feature, d.hook, d.label.as_ref().map(|l| format!("  \"{}\"", printable(l))).unwrap_or_default());
        println!("max {:.3}  mean {:.3}  density {:.3e} ({} tokens)  decoder norm {:.3}", d.max_activation, d.mean_activation, d.density, d.fire_count, d.decoder_norm);
        println!("\ntop examples (max token in the middle of the shown text):");
        for e in &d.top_examples {
            let from = (e.max_position as usize).saturating_sub(12).max(1);
            let to = (e.max_position as usize + 6).min(e.tokens.len());
            let text: String = (from..to).map(|i| paint(&e.tokens[i], e.activations[i], d.max_activation, color)).collect();
            println!("  {:>7.3}  {}", e.max_activation, text);
        }
        println!("\nlogit effects (W_dec @ W_U):");
        println!("  {:<24} {:<24}", "promoted", "suppressed");
        for i in 0..d.top_logits.len().max(d.bottom_logits.len()) {
            let cell = |l: Option<&pb::LogitEffect>| l.map(|l| format!("{:<14} {:>+7.3}", format!("{:?}", l.token), l.value)).unwrap_or_default();
            println!("  {:<24} {:<24}", cell(d.top_logits.get(i)), cell(d.bottom_logits.get(i)));
        }
        if let Some(h) = &d.histogram {
            println!("\nactivation histogram (non-zero activations):");
            let groups: Vec<u64> = h.counts.chunks(4).map(|c| c.iter().sum()).collect();
            let peak = groups.iter().copied().max().unwrap_or(1).max(1);
            let last = groups.iter().rposition(|&c| c > 0).unwrap_or(0);
            for (i, &count) in groups.iter().enumerate().take(last + 1) {
                let low = i as f32 * 4.0 * h.bin_width;
                println!("  {:>7.2}-{:<7.2} {:<40} {count}", low, low + 4.0 * h.bin_width, "#".repeat((count * 40 / peak) as usize));
            }
        }
        let neighbours: Vec<String> = d.neighbours.iter().map(|n| format!("{} ({:.2})", n.feature.as_ref().map_or(0, |f| f.feature), n.cosine)).collect();
        println!("\nnearest decoder directions: {}", neighbours.join(", "));
        Ok(())
    })
}

pub fn text(args: TextArgs) -> anyhow::Result<()> {
    runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::TopFeaturesForTextRequest {
            text: args.text.clone(),
            token_ids: Vec::new(),
            dictionary_ids: args.dictionary.clone(),
            k: args.k,
            k_text: 10,
            ignore_bos: Some(true),
            max_density: args.max_density,
        };
        let r = client.top_features_for_text(request).await.map_err(status)?.into_inner();
        let name = |f: &pb::FeatureActivation| {
            let feature = f.feature.clone().unwrap_or_default();
            format!("{}/{}", feature.dictionary_id, feature.feature)
        };
        if args.server.json {
            return print_json(&r);
        }
        for t in &r.tokens {
            let features: Vec<String> = t.features.iter().map(|f| format!("{} {:.2}{}", name(f), f.activation, f.label.as_ref().map(|l| format!(" \"{l}\"")).unwrap_or_default())).collect();
            println!("{:>4} {:<16} {}", t.position, format!("{:?}", t.token), features.join("   "));
        }
        println!("\nstrongest over the text:");
        for f in &r.text_features {
            println!("  {:<40} {:.3}{}", name(f), f.activation, f.label.as_ref().map(|l| format!("  \"{}\"", printable(l))).unwrap_or_default());
        }
        Ok(())
    })
}

pub fn label(args: LabelArgs) -> anyhow::Result<()> {
    let feature = parse_feature(&args.feature)?;
    runtime()?.block_on(async {
        let mut client = connect(&args.server).await?;
        let request = pb::SetFeatureLabelRequest { feature: Some(feature), label: args.label.clone(), author: args.author.clone() };
        let r = client.set_feature_label(request).await.map_err(status)?.into_inner();
        if args.server.json {
            return print_json(&r);
        }
        println!("labelled {} {:?} (searchable now; store generation {} unchanged)", args.feature, args.label, r.store_generation);
        Ok(())
    })
}
