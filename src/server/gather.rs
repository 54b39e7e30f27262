//! Merging the answers of several shards into one (namespace counts, clears and lists, stats,
//! and multi-key requests split by owner). Off the hot path: allocates freely.

use stategrid_proto::{
    ArchivedItemResult, ArchivedPutResult, ArchivedResponse, ErrorCode, ErrorReply, ItemResult,
    Meta, NsInfo, PutResult, Response, codec, frame,
};

use crate::net::AlignedBuf;

/// What a gathered request was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    NsList,
    /// Sums `Count` answers (count and clear).
    Sum,
    Stats,
    MultiRead,
    BulkPut,
    /// Concatenates `Keys` answers (a whole-host listing, Redis `KEYS`).
    Keys,
}

/// A request waiting for every shard's part.
pub struct Gather {
    pub kind: Kind,
    pub request_id: u32,
    /// One answer frame per part (filled as they arrive).
    pub parts: Vec<Option<Vec<u8>>>,
    /// For split requests: the original item indexes each part holds.
    pub indexes: Vec<Vec<u32>>,
    pub items: usize,
    pub remaining: usize,
}

/// Decodes one part's answer frame. Frames made by our own shards, but still validated.
fn decode(frame_bytes: &[u8]) -> Result<(AlignedBuf, usize, usize, usize), ErrorReply> {
    // Copy into an aligned buffer: a Vec<u8> from another thread carries no alignment promise.
    let buf = AlignedBuf::from_slice(frame_bytes);
    let p = frame::parse(buf.as_slice(), usize::MAX)
        .ok()
        .flatten()
        .ok_or_else(|| internal("a shard's answer is not a whole frame"))?;
    let (alen, voff, vlen) = (
        p.header.archive_bytes as usize,
        p.header.value_offset(),
        p.header.value_bytes as usize,
    );
    Ok((buf, alen, voff, vlen))
}

fn internal(what: &str) -> ErrorReply {
    ErrorReply::with_message(ErrorCode::Internal, 0, what)
}

/// Merges the parts into the final answer frame, appended to `out`.
pub fn finish(
    g: Gather,
    out: &mut Vec<u8>,
    finalize_stats: impl FnOnce(&mut stategrid_proto::Stats),
) {
    let id = g.request_id;
    match merge(&g, finalize_stats) {
        Ok((resp, values)) => codec::encode_response(out, id, &resp, &values),
        Err(e) => codec::encode_response(out, id, &Response::Error(e), &[]),
    }
}

fn merge(
    g: &Gather,
    finalize_stats: impl FnOnce(&mut stategrid_proto::Stats),
) -> Result<(Response, Vec<u8>), ErrorReply> {
    let mut decoded = Vec::with_capacity(g.parts.len());
    for part in &g.parts {
        let bytes = part
            .as_ref()
            .ok_or_else(|| internal("a shard's answer is missing"))?;
        decoded.push(decode(bytes)?);
    }
    let mut count = 0u64;
    let mut keys: Vec<Vec<u8>> = Vec::new();
    let mut ns: Vec<NsInfo> = Vec::new();
    let mut stats = stategrid_proto::Stats::default();
    let mut items: Vec<Option<ItemResult>> = vec![None; g.items];
    let mut item_values: Vec<&[u8]> = vec![&[]; g.items];
    let mut puts: Vec<Option<PutResult>> = vec![None; g.items];
    for (i, (buf, alen, voff, vlen)) in decoded.iter().enumerate() {
        let bytes = buf.as_slice();
        let archive = &bytes[frame::HEADER_BYTES..frame::HEADER_BYTES + alen];
        let trailer = &bytes[*voff..voff + vlen];
        let resp = codec::decode_response(archive).map_err(|e| internal(&e.to_string()))?;
        match (g.kind, resp) {
            (_, ArchivedResponse::Error(e)) => return Err(e.to_reply()),
            (Kind::Sum, ArchivedResponse::Count { objects }) => count += objects.to_native(),
            (Kind::Keys, ArchivedResponse::Keys { keys: part, .. }) => {
                keys.extend(part.iter().map(|k| k.as_slice().to_vec()))
            }
            (Kind::NsList, ArchivedResponse::Namespaces { items }) => {
                for it in items.iter() {
                    let id = it.id.to_native();
                    let entry = match ns.iter_mut().position(|n| n.id == id) {
                        Some(p) => &mut ns[p],
                        None => {
                            ns.push(NsInfo {
                                id,
                                name: String::new(),
                                objects: 0,
                            });
                            ns.last_mut().unwrap()
                        }
                    };
                    entry.objects += it.objects.to_native();
                    if !it.name.is_empty() {
                        entry.name = it.name.as_str().to_owned();
                    }
                }
            }
            (Kind::Stats, ArchivedResponse::Stats(s)) => {
                stats.objects += s.objects.to_native();
                stats.object_bytes += s.object_bytes.to_native();
                stats.connections += s.connections.to_native();
                stats.requests += s.requests.to_native();
                stats.evictions += s.evictions.to_native();
                stats.expirations += s.expirations.to_native();
                stats.shard_allocations += s.shard_allocations.to_native();
                stats.ring_waits += s.ring_waits.to_native();
                stats.serve_allocations += s.serve_allocations.to_native();
                stats.forwarded_requests += s.forwarded_requests.to_native();
                stats.handed_off_connections += s.handed_off_connections.to_native();
            }
            (Kind::MultiRead, ArchivedResponse::Multi { items: part }) => {
                let idx = &g.indexes[i];
                if part.len() != idx.len() {
                    return Err(internal("a shard answered a different number of items"));
                }
                let mut off = 0usize;
                for (it, &orig) in part.iter().zip(idx) {
                    let (res, value) = match it {
                        ArchivedItemResult::Found(m) => {
                            let meta: Meta = rkyv::deserialize::<Meta, rkyv::rancor::Error>(m)
                                .map_err(|e| internal(&e.to_string()))?;
                            let len = meta.value_bytes as usize;
                            let v = trailer
                                .get(off..off + len)
                                .ok_or_else(|| internal("short trailer"))?;
                            off += len;
                            (ItemResult::Found(meta), v)
                        }
                        ArchivedItemResult::Failed(e) => {
                            (ItemResult::Failed(e.to_reply()), &[][..])
                        }
                    };
                    items[orig as usize] = Some(res);
                    item_values[orig as usize] = value;
                }
            }
            (Kind::BulkPut, ArchivedResponse::Bulk { items: part }) => {
                let idx = &g.indexes[i];
                if part.len() != idx.len() {
                    return Err(internal("a shard answered a different number of items"));
                }
                for (it, &orig) in part.iter().zip(idx) {
                    puts[orig as usize] = Some(match it {
                        ArchivedPutResult::Written { version } => PutResult::Written {
                            version: version.to_native(),
                        },
                        ArchivedPutResult::Failed(e) => PutResult::Failed(e.to_reply()),
                    });
                }
            }
            _ => {
                return Err(internal(
                    "a shard answered with an unexpected response type",
                ));
            }
        }
    }
    Ok(match g.kind {
        Kind::Sum => (Response::Count { objects: count }, Vec::new()),
        Kind::Keys => (
            Response::Keys {
                keys,
                next_cursor: 0,
            },
            Vec::new(),
        ),
        Kind::NsList => {
            ns.sort_by(|a, b| a.name.cmp(&b.name).then(a.id.cmp(&b.id)));
            for n in ns.iter_mut().filter(|n| n.name.is_empty()) {
                n.name = format!("#{}", n.id);
            }
            (Response::Namespaces { items: ns }, Vec::new())
        }
        Kind::Stats => {
            finalize_stats(&mut stats);
            (Response::Stats(stats), Vec::new())
        }
        Kind::MultiRead => {
            let values = item_values.concat();
            let items = items
                .into_iter()
                .map(|i| i.ok_or_else(|| internal("an item got no answer")))
                .collect::<Result<Vec<_>, _>>()?;
            (Response::Multi { items }, values)
        }
        Kind::BulkPut => {
            let items = puts
                .into_iter()
                .map(|i| i.ok_or_else(|| internal("an item got no answer")))
                .collect::<Result<Vec<_>, _>>()?;
            (Response::Bulk { items }, Vec::new())
        }
    })
}
