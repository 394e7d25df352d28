//! A document's content as JSON: one entry per top-level type, by name.
//!
//! The server never declares the types clients use, so a root type that
//! only arrived in updates is "undefined" to yrs; its kind is inferred from
//! its content the way yrs does (`Out::as_prelim`), with one refinement: a
//! list whose items are all XML nodes is a Y.XmlFragment (what
//! y-prosemirror and friends use), rendered as its XML string.

use serde_json::Value;
use yrs::branch::BranchPtr;
use yrs::types::ToJson;
use yrs::{
    Any, Array, ArrayRef, Doc, GetString, In, MapRef, Out, ReadTxn, TextRef, Transact,
    XmlElementRef, XmlFragmentRef, types::AsPrelim,
};

/// Renders every top-level type of `doc`: Y.Text and XML as strings, Y.Map
/// as an object, Y.Array as an array.
pub fn doc_to_json(doc: &Doc) -> Value {
    let txn = doc.transact();
    let mut roots = serde_json::Map::new();
    let mut refs: Vec<(String, Out)> = txn
        .root_refs()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    refs.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, value) in refs {
        let any = match value {
            Out::UndefinedRef(branch) => undefined_to_json(branch, &txn),
            other => other.to_json(&txn),
        };
        roots.insert(name, any_to_json(&any));
    }
    Value::Object(roots)
}

fn undefined_to_json<T: ReadTxn>(branch: BranchPtr, txn: &T) -> Any {
    match Out::UndefinedRef(branch).as_prelim(txn) {
        In::Map(_) => MapRef::from(branch).to_json(txn),
        In::Text(_) | In::XmlText(_) => Any::from(TextRef::from(branch).get_string(txn)),
        In::XmlElement(_) => Any::from(XmlElementRef::from(branch).get_string(txn)),
        In::Array(_) => {
            let array = ArrayRef::from(branch);
            let xml_nodes = array
                .iter(txn)
                .all(|item| matches!(item, Out::YXmlElement(_) | Out::YXmlText(_)));
            if xml_nodes && array.len(txn) > 0 {
                Any::from(XmlFragmentRef::from(branch).get_string(txn))
            } else {
                array.to_json(txn)
            }
        }
        _ => Any::Map(Default::default()),
    }
}

fn any_to_json(any: &Any) -> Value {
    serde_json::to_value(any).unwrap_or(Value::Null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use yrs::updates::decoder::Decode;
    use yrs::{Map, Text, Update, XmlElementPrelim, XmlFragment, XmlTextPrelim};

    /// The content as a server sees it: applied from an update, types unknown.
    fn as_server_sees_it(source: &Doc) -> Doc {
        let update = source
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default());
        let doc = Doc::new();
        doc.transact_mut()
            .apply_update(Update::decode_v1(&update).unwrap())
            .unwrap();
        doc
    }

    #[test]
    fn renders_every_kind_of_root() {
        let source = Doc::new();
        let text = source.get_or_insert_text("text");
        let map = source.get_or_insert_map("map");
        let array = source.get_or_insert_array("array");
        let xml = source.get_or_insert_xml_fragment("prosemirror");
        {
            let mut txn = source.transact_mut();
            text.insert(&mut txn, 0, "hello world");
            map.insert(&mut txn, "n", 1);
            map.insert(&mut txn, "s", "x");
            array.push_back(&mut txn, 1);
            array.push_back(&mut txn, "two");
            let p = xml.push_back(&mut txn, XmlElementPrelim::empty("p"));
            p.push_back(&mut txn, XmlTextPrelim::new("hi"));
        }
        let json = doc_to_json(&as_server_sees_it(&source));
        assert_eq!(json["text"], json!("hello world"));
        assert_eq!(json["map"], json!({"n": 1, "s": "x"}));
        assert_eq!(json["array"], json!([1, "two"]));
        assert_eq!(json["prosemirror"], json!("<p>hi</p>"));
    }
}
