//! Cluster (CSI) volumes: not supported yet, every call answers `Unimplemented` so clients can tell
//! the feature apart from a failure.

use tonic::Status;

use super::ControlApi;

fn unsupported() -> Status {
    Status::unimplemented("not supported yet: cluster volumes")
}

pub(super) async fn create(
    _: &ControlApi,
    _: api::CreateVolumeRequest,
) -> Result<api::CreateVolumeResponse, Status> {
    Err(unsupported())
}

pub(super) async fn get(
    _: &ControlApi,
    _: api::GetVolumeRequest,
) -> Result<api::GetVolumeResponse, Status> {
    Err(unsupported())
}

pub(super) async fn update(
    _: &ControlApi,
    _: api::UpdateVolumeRequest,
) -> Result<api::UpdateVolumeResponse, Status> {
    Err(unsupported())
}

pub(super) async fn list(
    _: &ControlApi,
    _: api::ListVolumesRequest,
) -> Result<api::ListVolumesResponse, Status> {
    Err(unsupported())
}

pub(super) async fn remove(
    _: &ControlApi,
    _: api::RemoveVolumeRequest,
) -> Result<api::RemoveVolumeResponse, Status> {
    Err(unsupported())
}
