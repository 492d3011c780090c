//! Reports each HTTP request the S3 client transmits to the counted call it belongs to
//! ([`crate::requests`]): list pages, multipart parts and the SDK's retry attempts each
//! count, as the provider bills them.

use aws_sdk_s3::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_s3::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_s3::error::BoxError;

use crate::requests::{record_request, RequestOp};

/// An SDK interceptor that runs right before each attempt of each request is sent.
#[derive(Debug)]
pub(crate) struct CountRequests;

impl Intercept for CountRequests {
    fn name(&self) -> &'static str {
        "pgagent-count-requests"
    }

    fn read_before_transmit(
        &self,
        context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let request = context.request();
        if let Some(op) = RequestOp::of_http(request.method(), request.uri()) {
            record_request(op);
        }
        Ok(())
    }
}
