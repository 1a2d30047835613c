//! `loupe token` (bearer tokens with scopes, stored hashed) and `loupe tls create` (a CA
//! and certificates for a server and its clients).

use std::path::PathBuf;

use anyhow::Context;
use loupe_query::access::scope::Scope;
use loupe_query::access::tokens::{NewToken, TokenFile};
use loupe_query::config::default_tokens_file;

use crate::output::print_json;

#[derive(clap::Args, Clone)]
pub struct TokenFileArg {
    /// The token file (default: $LOUPE_TOKENS_FILE, else $LOUPE_HOME/tokens.json), the one
    /// `loupe serve` reads.
    #[arg(long, env = "LOUPE_TOKENS_FILE")]
    pub file: Option<PathBuf>,
}

impl TokenFileArg {
    fn open(&self) -> TokenFile {
        TokenFile::new(self.file.clone().unwrap_or_else(default_tokens_file))
    }
}

#[derive(clap::Subcommand)]
pub enum Token {
    /// Make a token; it is printed once (only its hash is stored).
    Create {
        /// Who calls with it (recorded on labels, monitors and alerts).
        #[arg(long)]
        name: String,
        /// read, inspect, steer, monitor, monitor-admin, label, admin (repeatable or
        /// comma-separated).
        #[arg(long = "scope", value_delimiter = ',', required = true)]
        scopes: Vec<String>,
        /// Requests per second this token may make (default: the server's).
        #[arg(long)]
        requests_per_second: Option<f64>,
        /// Model tokens per minute this token may run (default: the server's).
        #[arg(long)]
        model_tokens_per_minute: Option<u64>,
        #[command(flatten)]
        file: TokenFileArg,
        #[arg(long)]
        json: bool,
    },
    /// The tokens in the file (ids, names, scopes, quotas; never secrets).
    List {
        /// Revoked tokens too.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        file: TokenFileArg,
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by id, or every live token of a name; running servers stop accepting
    /// it at their next call.
    Revoke {
        id_or_name: String,
        #[command(flatten)]
        file: TokenFileArg,
    },
}

pub fn token(command: Token) -> anyhow::Result<()> {
    match command {
        Token::Create { name, scopes, requests_per_second, model_tokens_per_minute, file, json } => {
            let scopes = scopes.iter().map(|s| s.parse::<Scope>().map_err(|e| anyhow::anyhow!("--scope: {e}"))).collect::<anyhow::Result<Vec<_>>>()?;
            let tokens = file.open();
            let (record, token) = tokens.create(NewToken { name, scopes, requests_per_second, model_tokens_per_minute })?;
            if json {
                return print_json(&serde_json::json!({"id": record.id, "name": record.name, "scopes": record.scopes, "token": token, "file": tokens.path()}));
            }
            eprintln!("token {} for {:?} with scopes {} (in {}); it is shown only now:", record.id, record.name, record.scopes.join(","), tokens.path().display());
            println!("{token}");
        }
        Token::List { all, file, json } => {
            let tokens = file.open();
            let records: Vec<_> = tokens.load()?.into_iter().filter(|t| all || t.is_live()).collect();
            if json {
                let rows: Vec<_> = records
                    .iter()
                    .map(|t| serde_json::json!({"id": t.id, "name": t.name, "scopes": t.scopes, "created_at": t.created_at, "revoked_at": t.revoked_at, "requests_per_second": t.requests_per_second, "model_tokens_per_minute": t.model_tokens_per_minute}))
                    .collect();
                return print_json(&rows);
            }
            if records.is_empty() {
                println!("no tokens in {} (make one with `loupe token create --name NAME --scope read`)", tokens.path().display());
            }
            for t in &records {
                let quota = match (t.requests_per_second, t.model_tokens_per_minute) {
                    (None, None) => String::new(),
                    (rps, tpm) => format!("  quota {} req/s, {} model tokens/min", rps.map_or("default".into(), |r| r.to_string()), tpm.map_or("default".into(), |t| t.to_string())),
                };
                let revoked = t.revoked_at.as_ref().map_or(String::new(), |r| format!("  REVOKED {r}"));
                println!("{}  {:<20} {:<40} created {}{quota}{revoked}", t.id, t.name, t.scopes.join(","), t.created_at);
            }
        }
        Token::Revoke { id_or_name, file } => {
            let revoked = file.open().revoke(&id_or_name)?;
            for t in revoked {
                println!("revoked {} ({})", t.id, t.name);
            }
        }
    }
    Ok(())
}

#[derive(clap::Subcommand)]
pub enum Tls {
    /// A new CA, a server certificate for --host names and a client certificate (for mutual
    /// TLS), as PEM files in DIR: ca.pem, server.pem, server.key, client.pem, client.key.
    Create {
        dir: PathBuf,
        /// DNS names or IP addresses the server is reached at (repeatable).
        #[arg(long = "host", default_values = ["localhost", "127.0.0.1"])]
        hosts: Vec<String>,
        /// The client certificate's common name.
        #[arg(long, default_value = "loupe-client")]
        client_name: String,
        /// Replace files that exist.
        #[arg(long)]
        overwrite: bool,
    },
}

pub fn tls(command: Tls) -> anyhow::Result<()> {
    match command {
        Tls::Create { dir, hosts, client_name, overwrite } => {
            let files = loupe_query::access::tls::create_certificates(&dir, &hosts, &client_name, overwrite).with_context(|| format!("making certificates in {}", dir.display()))?;
            println!(
                "wrote {} (CA), {} + {} (server: {}), {} + {} (client)",
                files.ca.display(),
                files.server_cert.display(),
                files.server_key.display(),
                hosts.join(", "),
                files.client_cert.display(),
                files.client_key.display()
            );
            println!("serve:   loupe serve --tls-cert {} --tls-key {} [--tls-client-ca {}]", files.server_cert.display(), files.server_key.display(), files.ca.display());
            println!("clients: --server https://{}:50051 --tls-ca {} [--client-cert {} --client-key {}]", hosts[0], files.ca.display(), files.client_cert.display(), files.client_key.display());
        }
    }
    Ok(())
}
