//! `motey cluster init|token|revoke` on the CA node and `motey join` on a new one. They
//! work on the files of `<data_dir>/cluster/`; the running agent picks the changes up (a
//! revocation within one heartbeat interval).

use std::process::ExitCode;

use motey::cluster::join;
use motey::cluster::token::{parse_ttl, JoinToken, TokenBook};
use motey::cluster::{ClusterAuthority, ClusterFiles};
use motey::config::Config;

fn failed(error: impl std::fmt::Display) -> ExitCode {
    eprintln!("motey: {error}");
    ExitCode::FAILURE
}

/// This node's id; the store is read only when no id is configured (the agent must not
/// run then, it holds the store).
fn node_id(config: &Config) -> Result<String, String> {
    if let Some(id) = &config.general.node_id {
        return Ok(id.clone());
    }
    let store = motey::store::Store::open(&config.database.path).map_err(|error| {
        format!("{error}; set [GENERAL] node_id (or MOTEY_GENERAL_NODE_ID), or stop the agent")
    })?;
    motey::app::node_id(config, &store)
        .map(|id| id.to_string())
        .map_err(|error| error.to_string())
}

fn files(config: &Config) -> ClusterFiles {
    ClusterFiles::in_data_dir(&config.general.data_dir)
}

pub fn init(config: &Config) -> ExitCode {
    let node = match node_id(config) {
        Ok(node) => node,
        Err(error) => return failed(error),
    };
    let files = files(config);
    let authority = match ClusterAuthority::init(&files, &node, config.cluster.certificate_lifetime)
    {
        Ok(authority) => authority,
        Err(error) => return failed(error),
    };
    println!("made the cluster CA in {}", files.dir().display());
    println!("CA fingerprint (SHA-256): {}", authority.fingerprint());
    println!("node {node} holds its certificate");
    match motey::api::tls::issue_under_cluster_ca(config, &authority) {
        Ok(Some(fingerprint)) => println!(
            "the REST API's certificate is now issued by the CA (fingerprint {fingerprint}); restart the agent if it runs"
        ),
        Ok(None) => println!(
            "the REST API serves [WEBSERVER] tls_cert_file: joining nodes accept it only if it chains to this CA"
        ),
        Err(error) => return failed(error),
    }
    println!("next: `motey cluster token` prints a token for `motey join`");
    ExitCode::SUCCESS
}

pub fn token(config: &Config, ttl: &str, uses: u32) -> ExitCode {
    let ttl = match parse_ttl(ttl) {
        Ok(ttl) => ttl,
        Err(error) => {
            eprintln!("motey: --ttl: {error}");
            return ExitCode::from(2);
        }
    };
    let files = files(config);
    let authority = match ClusterAuthority::load(&files) {
        Ok(authority) => authority,
        Err(error) => return failed(error),
    };
    match TokenBook::new(files).issue(&authority.fingerprint(), ttl, uses) {
        Ok(token) => {
            println!("{token}");
            eprintln!(
                "valid for {} s and {} join(s); on the new node: motey join --token <token> --server <this node>:{}",
                ttl.as_secs(),
                uses.max(1),
                config.webserver.port
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

pub fn revoke(config: &Config, node: &str) -> ExitCode {
    let authority = match ClusterAuthority::load(&files(config)) {
        Ok(authority) => authority,
        Err(error) => return failed(error),
    };
    match authority.revoke(node) {
        Ok(count) => {
            println!(
                "revoked node {node} ({count} certificate(s)); the agent of this node publishes the list at its next heartbeat"
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

pub fn join(config: &Config, token: &str, server: &str) -> ExitCode {
    let token: JoinToken = match token.parse() {
        Ok(token) => token,
        Err(error) => {
            eprintln!("motey: --token: {error}");
            return ExitCode::from(2);
        }
    };
    let node = match node_id(config) {
        Ok(node) => node,
        Err(error) => return failed(error),
    };
    if let Err(error) = motey::private_fs::private_dir(&config.general.data_dir) {
        return failed(format!("{}: {error}", config.general.data_dir.display()));
    }
    let key_file = config.general.data_dir.join(motey::peer::KEY_FILE);
    let joined = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(join::join(&files(config), &key_file, &token, server, &node))
                .map_err(|error| error.to_string())
        });
    match joined {
        Ok(joined) => {
            println!(
                "node {} joined the cluster (CA {}); its certificate is valid until unix time {}",
                joined.node_id, token.ca_fingerprint, joined.not_after
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}

pub fn renew(config: &Config) -> ExitCode {
    let membership = match motey::cluster::Membership::load(&files(config)) {
        Ok(membership) => membership,
        Err(error) => return failed(error),
    };
    let renewed = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|error| error.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(motey::cluster::renewal::renew(
                    &membership,
                    config.cluster.certificate_lifetime,
                ))
                .map_err(|error| error.to_string())
        });
    match renewed {
        Ok(identity) => {
            println!(
                "renewed the certificate of node {}; valid until unix time {}",
                identity.node_id(),
                identity.not_after()
            );
            ExitCode::SUCCESS
        }
        Err(error) => failed(error),
    }
}
