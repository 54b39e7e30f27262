//! One function per client command. Each connects, makes its calls, and returns an
//! [`Outcome`] (text and JSON) or a [`Failure`]; exit codes are decided in `mod.rs`.

use std::ffi::OsString;
use std::io::Read;

use serde_json::json;
use stategrid_client::blocking::{Client, Namespace};
use stategrid_client::{ClientConfig, Error as ClientError, Timeout, TimeoutKind, WriteOpts};

use super::output::{
    Outcome, Text, bytes_json, key_text, meta_json, meta_text, namespaces_text, stats_json,
    stats_text,
};
use super::{Cli, Command, Failure, PutArgs, WriteArgs};

/// The CLI makes a handful of calls: one connection, a short connect timeout.
fn client_config(cli: &Cli) -> Result<ClientConfig, Failure> {
    Ok(ClientConfig {
        credentials: cli.credentials()?,
        connections: 1,
        inflight_per_conn_max: 8,
        request_timeout_ms: 5_000,
        connect_timeout_ms: 3_000,
        client_name: concat!("stategrid-cli/", env!("CARGO_PKG_VERSION")).to_owned(),
        ..ClientConfig::default()
    })
}

/// Attaches the operation's name to a client error.
fn ctx(what: impl Into<String>) -> impl FnOnce(ClientError) -> Failure {
    let what = what.into();
    move |error| Failure::Client { what, error }
}

fn connect(cli: &Cli, what: &str) -> Result<Client, Failure> {
    let config = ClientConfig {
        tls: cli
            .tls_ca()?
            .map(stategrid_client::TlsOptions::with_ca_file),
        ..client_config(cli)?
    };
    Client::connect(&cli.host, config).map_err(ctx(what))
}

/// Opens (and registers) a namespace: for writes that may create objects.
fn open(cli: &Cli, ns: &str, what: &str) -> Result<Namespace, Failure> {
    connect(cli, what)?.namespace(ns).map_err(ctx(what))
}

/// A namespace handle that registers nothing: for commands that never create an object, so
/// a mistyped name answers "not found" instead of creating an empty namespace.
fn existing(cli: &Cli, ns: &str, what: &str) -> Result<Namespace, Failure> {
    Ok(connect(cli, what)?.namespace_unregistered(ns))
}

/// The value argument: the bytes given, or stdin for `-` or no argument.
fn read_value(value: &Option<OsString>) -> Result<Vec<u8>, Failure> {
    match value {
        Some(v) if v != "-" => Ok(v.clone().into_encoded_bytes()),
        _ => {
            let mut buf = Vec::new();
            std::io::stdin().read_to_end(&mut buf).map_err(|e| {
                Failure::Usage(format!(
                    "cannot read the value from stdin: {e} (pass the value as an argument instead)"
                ))
            })?;
            Ok(buf)
        }
    }
}

fn write_opts(w: &WriteArgs) -> WriteOpts {
    WriteOpts {
        timeout: w.timeout.map(|timeout_s| Timeout {
            timeout_s,
            kind: w.timeout_kind.map_or(TimeoutKind::Absolute, Into::into),
        }),
        evictable: !w.not_evictable,
        content_type_bytes: 0,
    }
}

/// Runs every command except `serve`.
pub(super) fn execute(cli: &Cli) -> Result<Outcome, Failure> {
    match &cli.command {
        Command::Serve { .. }
        | Command::Params
        | Command::HashPassword
        | Command::Witness { .. } => {
            unreachable!("serve, params and witness are not client commands")
        }
        Command::Query => super::cluster::query(cli),
        Command::Join => super::cluster::join(cli),
        Command::Leave { wait, timeout } => super::cluster::leave(cli, *wait, *timeout),
        Command::Set { name, value, all } => super::cluster::set(cli, name, value, *all),
        Command::Show => show(cli),
        Command::Put(args) => put(cli, args),
        Command::Get { ns, key, lock } => get(cli, ns, key, *lock),
        Command::UpdateUnlock {
            ns,
            key,
            token,
            value,
            write,
        } => update_unlock(cli, ns, key, *token, value, write),
        Command::Unlock { ns, key, token } => unlock(cli, ns, key, *token),
        Command::Remove { ns, key, force } => remove(cli, ns, key, *force),
        Command::Meta { ns, key } => meta(cli, ns, key),
        Command::Touch {
            ns,
            key,
            timeout,
            timeout_kind,
        } => touch(cli, ns, key, *timeout, timeout_kind.map(Into::into)),
        Command::Keys { ns } => keys(cli, ns),
        Command::Count { ns } => count(cli, ns),
        Command::Clear { ns } => clear(cli, ns),
        Command::Namespaces => namespaces(cli),
    }
}

fn show(cli: &Cli) -> Result<Outcome, Failure> {
    let client = connect(cli, "show")?;
    let stats = client.stats().map_err(ctx("show"))?;
    Ok(Outcome::lines(
        stats_text(client.addr(), &stats),
        stats_json(client.addr(), &stats),
    ))
}

fn put(cli: &Cli, args: &PutArgs) -> Result<Outcome, Failure> {
    let value = read_value(&args.value)?;
    let what = format!("put {}/{}", args.ns, args.key);
    let ns = open(cli, &args.ns, &what)?;
    let opts = write_opts(&args.write);
    let (mode, version) = if args.add {
        ("add", ns.add(&args.key, &value, opts))
    } else if let Some(v) = args.if_version {
        (
            "update-if-version",
            ns.update_if_version(&args.key, &value, opts, v),
        )
    } else if args.update {
        ("update", ns.update(&args.key, &value, opts))
    } else {
        ("put", ns.put(&args.key, &value, opts))
    };
    let version = version.map_err(ctx(what))?;
    Ok(Outcome::lines(
        format!("version {version}"),
        json!({
            "namespace": args.ns,
            "key": args.key,
            "mode": mode,
            "value_bytes": value.len(),
            "version": version,
        }),
    ))
}

fn get(cli: &Cli, ns_name: &str, key: &str, lock: bool) -> Result<Outcome, Failure> {
    let what = format!("get {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    let (value, meta, lock_token) = if lock {
        let l = ns.read_and_lock(key).map_err(ctx(what))?;
        (l.value, l.meta, Some(l.lock_token))
    } else {
        let r = ns.read(key).map_err(ctx(what))?;
        (r.value, r.meta, None)
    };
    let (value_json, encoding) = bytes_json(&value);
    let mut json = json!({
        "namespace": ns_name,
        "key": key,
        "value": value_json,
        "encoding": encoding,
        "version": meta.version,
        "meta": meta_json(&meta),
    });
    if let Some(token) = lock_token {
        json["lock_token"] = json!(token.to_string());
    }
    Ok(Outcome {
        json,
        text: Text::Bytes(value),
        note: lock_token.map(|t| {
            format!("lock_token {t} (finish with `stategrid update-unlock {ns_name} {key} {t}` or `stategrid unlock {ns_name} {key} {t}`)")
        }),
    })
}

fn update_unlock(
    cli: &Cli,
    ns_name: &str,
    key: &str,
    token: u64,
    value: &Option<OsString>,
    write: &WriteArgs,
) -> Result<Outcome, Failure> {
    let value = read_value(value)?;
    let what = format!("update-unlock {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    let version = ns
        .update_and_unlock(key, &value, write_opts(write), token)
        .map_err(ctx(what))?;
    Ok(Outcome::lines(
        format!("version {version}"),
        json!({
            "namespace": ns_name,
            "key": key,
            "value_bytes": value.len(),
            "version": version,
            "unlocked": true,
        }),
    ))
}

fn unlock(cli: &Cli, ns_name: &str, key: &str, token: u64) -> Result<Outcome, Failure> {
    let what = format!("unlock {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    ns.unlock(key, token).map_err(ctx(what))?;
    Ok(Outcome::lines(
        format!("unlocked {ns_name}/{key}"),
        json!({ "namespace": ns_name, "key": key, "unlocked": true }),
    ))
}

fn remove(cli: &Cli, ns_name: &str, key: &str, force: bool) -> Result<Outcome, Failure> {
    let what = format!("remove {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    if force {
        ns.remove_forced(key)
    } else {
        ns.remove(key)
    }
    .map_err(ctx(what))?;
    Ok(Outcome::lines(
        format!("removed {ns_name}/{key}"),
        json!({ "namespace": ns_name, "key": key, "removed": true }),
    ))
}

fn meta(cli: &Cli, ns_name: &str, key: &str) -> Result<Outcome, Failure> {
    let what = format!("meta {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    let meta = ns.meta(key).map_err(ctx(what))?;
    let mut json = meta_json(&meta);
    json["namespace"] = json!(ns_name);
    json["key"] = json!(key);
    Ok(Outcome::lines(meta_text(&meta), json))
}

/// With `--timeout` but no `--timeout-kind`, the object keeps its kind: a sliding session
/// touched with a new length stays sliding. That costs one `meta` call first.
fn touch(
    cli: &Cli,
    ns_name: &str,
    key: &str,
    timeout_s: Option<u32>,
    kind: Option<TimeoutKind>,
) -> Result<Outcome, Failure> {
    let what = format!("touch {ns_name}/{key}");
    let ns = existing(cli, ns_name, &what)?;
    let timeout = match (timeout_s, kind) {
        (None, _) => None,
        (Some(timeout_s), Some(kind)) => Some(Timeout { timeout_s, kind }),
        (Some(timeout_s), None) => {
            let kind = ns.meta(key).map_err(ctx(what.clone()))?.timeout.kind;
            Some(Timeout { timeout_s, kind })
        }
    };
    ns.touch(key, timeout).map_err(ctx(what))?;
    let mut json = json!({ "namespace": ns_name, "key": key, "touched": true });
    if let Some(t) = timeout {
        json["timeout_s"] = json!(t.timeout_s);
        json["timeout_kind"] = json!(super::output::kind_name(t.kind));
    }
    Ok(Outcome::lines(format!("touched {ns_name}/{key}"), json))
}

fn keys(cli: &Cli, ns_name: &str) -> Result<Outcome, Failure> {
    let what = format!("keys {ns_name}");
    let ns = existing(cli, ns_name, &what)?;
    let keys: Vec<String> = ns
        .keys()
        .map_err(ctx(what))?
        .iter()
        .map(|k| key_text(k))
        .collect();
    let mut text = String::new();
    for k in &keys {
        text.push_str(k);
        text.push('\n');
    }
    Ok(Outcome::lines(
        text,
        json!({ "namespace": ns_name, "count": keys.len(), "keys": keys }),
    ))
}

fn count(cli: &Cli, ns_name: &str) -> Result<Outcome, Failure> {
    let what = format!("count {ns_name}");
    let ns = existing(cli, ns_name, &what)?;
    let objects = ns.count().map_err(ctx(what))?;
    Ok(Outcome::lines(
        objects.to_string(),
        json!({ "namespace": ns_name, "objects": objects }),
    ))
}

fn clear(cli: &Cli, ns_name: &str) -> Result<Outcome, Failure> {
    let what = format!("clear {ns_name}");
    let ns = existing(cli, ns_name, &what)?;
    ns.clear().map_err(ctx(what))?;
    Ok(Outcome::lines(
        format!("cleared {ns_name}"),
        json!({ "namespace": ns_name, "cleared": true }),
    ))
}

fn namespaces(cli: &Cli) -> Result<Outcome, Failure> {
    let client = connect(cli, "namespaces")?;
    let items = client.namespaces().map_err(ctx("namespaces"))?;
    let json_items: Vec<_> = items
        .iter()
        .map(|n| json!({ "name": n.name, "id": n.id, "objects": n.objects }))
        .collect();
    Ok(Outcome::lines(
        namespaces_text(&items),
        json!({ "namespaces": json_items }),
    ))
}
