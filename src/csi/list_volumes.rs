//! ListVolumes: the volumes this controller created (its CreateVolume
//! records in `--state-dir`, see `state`), in volume-ID order, each with
//! its condition as ControllerGetVolume sees it (the external health
//! monitor lists volumes to report abnormal ones on their PVCs).
//!
//! Pages are cut by the last volume ID returned (the token is that ID,
//! percent-encoded), not by position: a volume created or deleted between
//! two pages neither shifts the next page nor makes its token invalid.
//! Static volumes, and volumes whose record was lost with the state dir,
//! are not listed (docs/csi.md).

use percent_encoding::{percent_decode_str, utf8_percent_encode, NON_ALPHANUMERIC};
use tonic::Status;

use super::controller::ControllerService;
use super::get_volume::listed_condition;
use super::proto::list_volumes_response::{Entry, VolumeStatus};
use super::proto::{ListVolumesRequest, ListVolumesResponse, Volume};
use super::state::ControllerRecord;

/// Conditions checked at once (each may contact a backend).
const CHECKS_AT_ONCE: usize = 8;

fn token_of(volume_id: &str) -> String {
    utf8_percent_encode(volume_id, NON_ALPHANUMERIC).to_string()
}

/// The volume ID a token continues after; ABORTED for one we never issued
/// (what the spec asks for an invalid `starting_token`).
fn after_token(token: &str) -> Result<Option<String>, Status> {
    if token.is_empty() {
        return Ok(None);
    }
    let not_ours = || {
        Status::aborted(format!(
            "starting_token {token:?} was not issued by cachalot's ListVolumes"
        ))
    };
    let id = percent_decode_str(token)
        .decode_utf8()
        .map_err(|_| not_ours())?;
    if token_of(&id) != token || !id.starts_with("v1#") {
        return Err(not_ours());
    }
    Ok(Some(id.into_owned()))
}

impl ControllerService {
    pub async fn list_volumes(
        &self,
        req: ListVolumesRequest,
    ) -> Result<ListVolumesResponse, Status> {
        use futures::StreamExt;
        let after = after_token(&req.starting_token)?;
        let page_size = match req.max_entries {
            n if n < 0 => {
                return Err(Status::invalid_argument(format!(
                    "max_entries {n} is negative"
                )))
            }
            0 => usize::MAX,
            n => n as usize,
        };
        let rest: Vec<_> = self
            .state
            .all_controller()
            .into_iter()
            .filter(|r| {
                after
                    .as_ref()
                    .is_none_or(|a| r.volume_id.as_str() > a.as_str())
            })
            .collect();
        let page = &rest[..rest.len().min(page_size)];
        let next_token = match (page.last(), rest.len() > page.len()) {
            (Some(last), true) => token_of(&last.volume_id),
            _ => String::new(),
        };
        let entries = futures::stream::iter(page.to_vec())
            .map(|record| self.entry(record))
            .buffered(CHECKS_AT_ONCE)
            .collect()
            .await;
        Ok(ListVolumesResponse {
            entries,
            next_token,
        })
    }

    async fn entry(&self, record: ControllerRecord) -> Entry {
        let condition = listed_condition(self, &record.volume_id).await;
        Entry {
            volume: Some(Volume {
                capacity_bytes: record.capacity_bytes,
                volume_id: record.volume_id,
                ..Volume::default()
            }),
            status: Some(VolumeStatus {
                published_node_ids: Vec::new(),
                volume_condition: Some(condition),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_foreign_ones_are_aborted() {
        let id = "v1#nfs#server##/export#pvc-1 x#delete";
        assert_eq!(after_token(&token_of(id)).unwrap().as_deref(), Some(id));
        assert_eq!(after_token("").unwrap(), None);
        for bad in ["10", "v1#file", "%ff%fe", "garbage%2"] {
            let e = after_token(bad).expect_err(bad);
            assert_eq!(e.code(), tonic::Code::Aborted, "{bad}");
        }
    }
}
