//! The S3 XML documents we parse ourselves (see `raw.rs` for why):
//! ListObjectsV2 pages, ListMultipartUploads pages and error bodies.

use std::time::SystemTime;

use serde::Deserialize;

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct ListPage {
    #[serde(default)]
    pub contents: Vec<ListedObject>,
    #[serde(default)]
    pub common_prefixes: Vec<CommonPrefix>,
    #[serde(default)]
    pub is_truncated: bool,
    #[serde(default)]
    pub next_continuation_token: Option<String>,
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct ListedObject {
    pub key: String,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub last_modified: Option<String>,
    #[serde(rename = "ETag", default)]
    pub e_tag: Option<String>,
}

impl ListedObject {
    pub fn modified(&self) -> SystemTime {
        self.last_modified
            .as_deref()
            .map(parse_time)
            .unwrap_or(SystemTime::UNIX_EPOCH)
    }
}

#[derive(Debug, Deserialize, Clone)]
#[serde(rename_all = "PascalCase")]
pub struct CommonPrefix {
    pub prefix: String,
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
pub struct UploadsPage {
    #[serde(default, rename = "Upload")]
    pub uploads: Vec<Upload>,
    #[serde(default)]
    pub is_truncated: bool,
    #[serde(default)]
    pub next_key_marker: Option<String>,
    #[serde(default)]
    pub next_upload_id_marker: Option<String>,
}

#[derive(Debug, Deserialize, Clone, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Upload {
    pub key: String,
    pub upload_id: String,
    #[serde(default)]
    pub initiated: Option<String>,
}

impl Upload {
    pub fn initiated_at(&self) -> Option<SystemTime> {
        self.initiated.as_deref().map(parse_time)
    }
}

#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ErrorBody {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

pub fn parse_list(xml: &str) -> Result<ListPage, String> {
    quick_xml::de::from_str(xml).map_err(|e| format!("unparsable ListObjectsV2 answer: {e}"))
}

pub fn parse_uploads(xml: &str) -> Result<UploadsPage, String> {
    quick_xml::de::from_str(xml).map_err(|e| format!("unparsable ListMultipartUploads answer: {e}"))
}

/// `(Code, Message)` of an S3 error body, if it is one.
pub fn parse_error(xml: &str) -> Option<(String, String)> {
    if !xml.contains("<Error") {
        return None;
    }
    let body: ErrorBody = quick_xml::de::from_str(xml).ok()?;
    Some((body.code?, body.message.unwrap_or_default()))
}

#[derive(Debug, Deserialize)]
struct CopyPartResult {
    #[serde(rename = "ETag")]
    etag: Option<String>,
}

/// The ETag of an UploadPartCopy answer (`<CopyPartResult>`).
pub fn parse_copy_part(xml: &str) -> Option<String> {
    let body: CopyPartResult = quick_xml::de::from_str(xml).ok()?;
    body.etag
}

/// RFC 3339 (`2024-01-02T03:04:05.000Z`) to SystemTime; the epoch if garbled.
pub fn parse_time(text: &str) -> SystemTime {
    chrono::DateTime::parse_from_rfc3339(text)
        .map(SystemTime::from)
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_page() {
        let xml = r#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">
  <Name>test</Name><Prefix>p/</Prefix><KeyCount>3</KeyCount><MaxKeys>1000</MaxKeys>
  <Delimiter>/</Delimiter><IsTruncated>true</IsTruncated>
  <NextContinuationToken>tok&amp;1</NextContinuationToken>
  <Contents><Key>p/a &amp; b</Key><LastModified>2024-05-06T07:08:09.000Z</LastModified>
    <ETag>&quot;abc&quot;</ETag><Size>12</Size><StorageClass>STANDARD</StorageClass></Contents>
  <Contents><Key>p/c</Key><LastModified>2024-05-06T07:08:09Z</LastModified><ETag>"d"</ETag><Size>0</Size></Contents>
  <CommonPrefixes><Prefix>p/dir/</Prefix></CommonPrefixes>
  <CommonPrefixes><Prefix>p/dir2/</Prefix></CommonPrefixes>
</ListBucketResult>"#;
        let page = parse_list(xml).unwrap();
        assert_eq!(page.contents.len(), 2);
        assert_eq!(page.contents[0].key, "p/a & b");
        assert_eq!(page.contents[0].e_tag.as_deref(), Some("\"abc\""));
        assert_eq!(page.contents[0].size, 12);
        assert!(page.contents[0].modified() > SystemTime::UNIX_EPOCH);
        assert_eq!(page.common_prefixes.len(), 2);
        assert!(page.is_truncated);
        assert_eq!(page.next_continuation_token.as_deref(), Some("tok&1"));
        let empty =
            parse_list("<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>")
                .unwrap();
        assert!(empty.contents.is_empty() && !empty.is_truncated);
    }

    #[test]
    fn copy_part_answer() {
        let answer = r#"<?xml version="1.0" encoding="UTF-8"?>
<CopyPartResult><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>"abc123"</ETag></CopyPartResult>"#;
        assert_eq!(parse_copy_part(answer).as_deref(), Some("\"abc123\""));
        assert_eq!(parse_copy_part("<CopyPartResult></CopyPartResult>"), None);
    }

    #[test]
    fn uploads_page_and_errors() {
        let xml = r#"<ListMultipartUploadsResult><Bucket>t</Bucket>
<IsTruncated>false</IsTruncated>
<Upload><Key>p/big</Key><UploadId>u1</UploadId><Initiated>2024-01-01T00:00:00Z</Initiated></Upload>
<Upload><Key>p/other</Key><UploadId>u2</UploadId></Upload>
</ListMultipartUploadsResult>"#;
        let page = parse_uploads(xml).unwrap();
        assert_eq!(page.uploads.len(), 2);
        assert_eq!(page.uploads[1].upload_id, "u2");
        assert!(page.uploads[0].initiated_at().is_some());
        let err = "<?xml version=\"1.0\"?><Error><Code>NoSuchBucket</Code><Message>gone</Message><BucketName>x</BucketName></Error>";
        assert_eq!(
            parse_error(err),
            Some(("NoSuchBucket".to_string(), "gone".to_string()))
        );
        assert_eq!(parse_error("plain text"), None);
    }
}
