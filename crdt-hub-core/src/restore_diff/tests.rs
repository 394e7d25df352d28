//! `restore_update` against every kind of shared type, nested, formatted,
//! as a server sees them (undefined roots), and against random histories.

use std::collections::HashMap;
use std::sync::Arc;

use proptest::prelude::*;
use serde_json::{Value, json};
use yrs::types::Attrs;
use yrs::types::text::YChange;
use yrs::types::xml::{XmlElementPrelim, XmlFragmentPrelim, XmlOut, XmlTextPrelim, XmlTextRef};
use yrs::updates::decoder::Decode;
use yrs::{
    Any, Array, ArrayPrelim, ArrayRef, Doc, GetString, Map, MapPrelim, Out, ReadTxn, StateVector,
    Text, TextPrelim, TextRef, Transact, Update, WriteTxn, Xml, XmlFragment,
};

use super::restore_update;
use crate::doc_json::doc_to_json;

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

fn apply(doc: &Doc, update: &[u8]) {
    doc.transact_mut()
        .apply_update(Update::decode_v1(update).unwrap())
        .unwrap();
}

/// A copy of `doc` as a server holds it: built from bytes, every root
/// "undefined" until someone declares it.
fn server_view(doc: &Doc) -> Doc {
    let copy = Doc::new();
    apply(&copy, &state(doc));
    copy
}

/// A client's document: Yjs counts text offsets in UTF-16 code units.
fn new_doc(client_id: u64) -> Doc {
    Doc::with_options(yrs::Options {
        offset_kind: yrs::OffsetKind::Utf16,
        ..yrs::Options::with_client_id(yrs::ClientID::new(client_id))
    })
}

fn fork(doc: &Doc, client_id: u64) -> Doc {
    let copy = new_doc(client_id);
    apply(&copy, &state(doc));
    copy
}

fn bold() -> Attrs {
    Attrs::from([(Arc::from("bold"), Any::Bool(true))])
}

fn attrs(entries: &[(&str, Any)]) -> Attrs {
    entries
        .iter()
        .map(|(k, v)| (Arc::from(*k), v.clone()))
        .collect()
}

/// The root types the tests use, by name and kind.
#[derive(Clone, Copy)]
enum Root {
    Text,
    Map,
    Array,
    Xml,
}

const ROOTS: &[(&str, Root)] = &[
    ("t", Root::Text),
    ("m", Root::Map),
    ("a", Root::Array),
    ("x", Root::Xml),
];

/// Everything observable about a document's content, strictly: text as
/// deltas with formatting (adjacent equal runs merged), XML attributes with
/// their value types, nested types recursively. Reads a fresh server view
/// with the roots declared, so both sides are read the same way.
fn deep(doc: &Doc) -> Value {
    let view = server_view(doc);
    let refs: Vec<(&str, Out)> = ROOTS
        .iter()
        .map(|(name, kind)| {
            let value = match kind {
                Root::Text => Out::YText(view.get_or_insert_text(*name)),
                Root::Map => Out::YMap(view.get_or_insert_map(*name)),
                Root::Array => Out::YArray(view.get_or_insert_array(*name)),
                Root::Xml => Out::YXmlFragment(view.get_or_insert_xml_fragment(*name)),
            };
            (*name, value)
        })
        .collect();
    let txn = view.transact();
    let mut out = serde_json::Map::new();
    for (name, value) in refs {
        out.insert(name.to_string(), deep_value(&txn, &value));
    }
    Value::Object(out)
}

fn deep_value<T: ReadTxn>(txn: &T, value: &Out) -> Value {
    match value {
        Out::Any(any) => serde_json::to_value(any).unwrap(),
        Out::YText(text) => json!({ "text": delta(txn, text) }),
        Out::YXmlText(text) => json!({
            "xml_text": delta(txn, text.as_ref()),
            "attrs": attributes(txn, text),
        }),
        Out::YMap(map) => {
            let entries: serde_json::Map<String, Value> = map
                .iter(txn)
                .map(|(k, v)| (k.to_string(), deep_value(txn, &v)))
                .collect();
            json!({ "map": entries })
        }
        Out::YArray(array) => {
            let items: Vec<Value> = array.iter(txn).map(|v| deep_value(txn, &v)).collect();
            json!({ "array": items })
        }
        Out::YXmlElement(element) => json!({
            "tag": element.tag().to_string(),
            "attrs": attributes(txn, element),
            "children": children(txn, element),
        }),
        Out::YXmlFragment(fragment) => json!({ "fragment": children(txn, fragment) }),
        Out::YDoc(doc) => json!({ "doc": doc.guid().to_string() }),
        Out::UndefinedRef(_) => json!("undefined"),
    }
}

fn attributes<T: ReadTxn, X: Xml>(txn: &T, node: &X) -> Value {
    let attrs: serde_json::Map<String, Value> = node
        .attributes(txn)
        .map(|(k, v)| (k.to_string(), deep_value(txn, &v)))
        .collect();
    Value::Object(attrs)
}

fn children<T: ReadTxn, X: XmlFragment>(txn: &T, node: &X) -> Vec<Value> {
    node.children(txn)
        .map(|child| {
            let value = match child {
                XmlOut::Element(e) => Out::YXmlElement(e),
                XmlOut::Fragment(f) => Out::YXmlFragment(f),
                XmlOut::Text(t) => Out::YXmlText(t),
            };
            deep_value(txn, &value)
        })
        .collect()
}

/// A text's delta with adjacent string runs of equal formatting merged
/// (yrs splits runs at redundant format markers; Yjs renders them alike).
fn delta<T: ReadTxn>(txn: &T, text: &TextRef) -> Vec<Value> {
    let mut out: Vec<(Value, Option<Value>)> = Vec::new();
    for chunk in text.diff(txn, YChange::identity) {
        let attrs = chunk.attributes.map(|a| {
            serde_json::to_value(Any::from(
                a.into_iter()
                    .map(|(k, v)| (k.to_string(), v))
                    .collect::<HashMap<_, _>>(),
            ))
            .unwrap()
        });
        if let Out::Any(Any::String(s)) = &chunk.insert {
            if let Some((Value::String(prev), prev_attrs)) = out.last_mut()
                && *prev_attrs == attrs
            {
                prev.push_str(s);
                continue;
            }
            out.push((Value::String(s.to_string()), attrs));
        } else {
            out.push((json!({ "embed": deep_value(txn, &chunk.insert) }), attrs));
        }
    }
    out.into_iter()
        .map(|(insert, attrs)| json!({ "insert": insert, "attributes": attrs }))
        .collect()
}

/// Restores `current` to `target` and checks every way of looking at the
/// result: the strict deep view, `doc_json` as a server renders it, and
/// that a second restore has nothing left to do. Returns the update.
fn assert_restores(current: &Doc, target: &Doc) -> Option<Vec<u8>> {
    let update = restore_update(current, target).expect("restore computes");
    if let Some(update) = &update {
        crate::decode_guard::check_update_v1(update).expect("the update passes the guard");
        apply(current, update);
    }
    assert_eq!(deep(current), deep(target), "deep content differs");
    assert_eq!(rendered(current), rendered(target), "doc_json differs");
    let again = restore_update(current, target).unwrap();
    assert!(
        again.is_none(),
        "a second restore still changed something: {:?}",
        again.map(|u| Update::decode_v1(&u).unwrap())
    );
    update
}

/// `doc_json` as a server renders the document, without empty roots: a
/// root type cannot be removed from a Yjs document, so a root the version
/// never had stays behind, emptied.
fn rendered(doc: &Doc) -> Value {
    let Value::Object(mut roots) = doc_to_json(&server_view(doc)) else {
        panic!("doc_json renders an object")
    };
    roots.retain(|_, v| {
        !matches!(v, Value::String(s) if s.is_empty()) && v != &json!([]) && v != &json!({})
    });
    for value in roots.values_mut() {
        if let Value::String(s) = value {
            *s = sort_xml_attributes(s);
        }
    }
    Value::Object(roots)
}

/// yrs writes an XML element's attributes in hash-map order: sort them
/// within each opening tag so that equal elements render alike.
fn sort_xml_attributes(xml: &str) -> String {
    let mut out = String::new();
    let mut rest = xml;
    while let Some(start) = rest.find('<') {
        out.push_str(&rest[..start]);
        let Some(len) = rest[start..].find('>') else {
            break;
        };
        let tag = &rest[start + 1..start + len];
        let mut parts: Vec<String> = Vec::new();
        let mut quoted = false;
        let mut current = String::new();
        for c in tag.chars() {
            if c == '"' {
                quoted = !quoted;
            }
            if c == ' ' && !quoted {
                parts.push(std::mem::take(&mut current));
            } else {
                current.push(c);
            }
        }
        parts.push(current);
        parts[1..].sort();
        out.push('<');
        out.push_str(&parts.join(" "));
        out.push('>');
        rest = &rest[start + len + 1..];
    }
    out.push_str(rest);
    out
}

/// Edits `doc` in one transaction.
fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut)) {
    let mut txn = doc.transact_mut();
    f(&mut txn);
}

// ---------------------------------------------------------------------------
// Unit tests: each kind of type
// ---------------------------------------------------------------------------

#[test]
fn equal_documents_need_no_update() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "same");
    });
    assert!(restore_update(&doc, &server_view(&doc)).unwrap().is_none());
    assert!(restore_update(&Doc::new(), &Doc::new()).unwrap().is_none());
}

#[test]
fn plain_text_goes_back_and_forth() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "hello world");
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 6, "brave new ");
        t.remove_range(txn, 0, 1);
        t.insert(txn, 0, "J");
    });
    let before = server_view(&doc);
    let current = server_view(&doc);
    assert_restores(&current, &version);
    // And the undo of the restore.
    assert_restores(&current, &before);
}

#[test]
fn text_diff_is_minimal_around_the_change() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "the quick brown fox");
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t").remove_range(txn, 4, 6); // "quick "
    });
    let current = server_view(&doc);
    let update = assert_restores(&current, &version).unwrap();
    let decoded = Update::decode_v1(&update).unwrap();
    // One insert of "quick " and nothing deleted.
    assert!(
        decoded.delete_set().is_empty(),
        "kept text was deleted: {decoded:?}"
    );
    assert_eq!(
        yrs::GetString::get_string(&current.get_or_insert_text("t"), &current.transact()),
        "the quick brown fox"
    );
}

#[test]
fn unicode_text_is_edited_on_character_boundaries() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "a😀b — café 𝄞");
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        let len = t.len(txn);
        t.remove_range(txn, 0, len);
        t.insert(txn, 0, "😀😀 x 𝄞é");
    });
    assert_restores(&server_view(&doc), &version);
}

#[test]
fn formatting_is_restored_exactly() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "plain bold italic link");
        t.format(txn, 6, 4, bold());
        t.format(txn, 11, 6, attrs(&[("italic", Any::Bool(true))]));
        t.format(
            txn,
            18,
            4,
            attrs(&[("link", Any::from("https://a.example"))]),
        );
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        // Unbold, re-colour, extend a link, bold something new.
        t.format(txn, 6, 4, attrs(&[("bold", Any::Null)]));
        t.format(
            txn,
            11,
            6,
            attrs(&[("italic", Any::Null), ("color", Any::from("red"))]),
        );
        t.format(
            txn,
            18,
            4,
            attrs(&[("link", Any::from("https://b.example"))]),
        );
        t.format(txn, 0, 5, bold());
        t.insert_with_attributes(txn, 5, "XX", bold());
    });
    let current = server_view(&doc);
    let update = assert_restores(&current, &version).unwrap();
    // Re-formatting keeps the characters: nothing but format markers and
    // the inserted "XX" is deleted.
    let t = current.get_or_insert_text("t");
    assert_eq!(t.get_string(&current.transact()), "plain bold italic link");
    assert!(!update.is_empty());
}

#[test]
fn inserted_text_does_not_inherit_neighbouring_formatting() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "abc");
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.remove_range(txn, 1, 1);
        t.format(txn, 0, 2, bold());
    });
    // The restore re-inserts "b" between two bold characters it unbolds.
    assert_restores(&server_view(&doc), &version);
}

#[test]
fn embeds_with_attributes_are_restored() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "see  here");
        let image = Any::from(HashMap::from([("image".to_string(), Any::from("a.png"))]));
        t.insert_embed_with_attributes(txn, 4, image, attrs(&[("width", Any::from(20))]));
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.remove_range(txn, 4, 1);
        let other = Any::from(HashMap::from([("image".to_string(), Any::from("b.png"))]));
        t.insert_embed(txn, 0, other);
    });
    assert_restores(&server_view(&doc), &version);
}

#[test]
fn maps_with_nested_types_are_restored_in_place() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "n", 1);
        m.insert(txn, "gone", "soon");
        m.insert(txn, "list", vec![Any::from(1), Any::from("two")]);
        let inner = m.insert(txn, "inner", MapPrelim::default());
        inner.insert(txn, "deep", true);
        let note = inner.insert(txn, "note", TextPrelim::new("nested text"));
        note.format(txn, 0, 6, bold());
        let arr = m.insert(txn, "arr", ArrayPrelim::default());
        arr.push_back(txn, MapPrelim::from([("id", Any::from(7))]));
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let m = txn.get_or_insert_map("m");
        m.insert(txn, "n", 2);
        m.remove(txn, "gone");
        m.insert(txn, "new", Any::Null);
        m.insert(txn, "list", TextPrelim::new("now a text"));
        let Some(Out::YMap(inner)) = m.get(txn, "inner") else {
            panic!()
        };
        inner.insert(txn, "deep", false);
        let Some(Out::YText(note)) = inner.get(txn, "note") else {
            panic!()
        };
        note.insert(txn, 0, ">> ");
        let Some(Out::YArray(arr)) = m.get(txn, "arr") else {
            panic!()
        };
        arr.remove(txn, 0);
    });
    let current = server_view(&doc);
    let update = assert_restores(&current, &version).unwrap();
    // The nested map survived (restored in place, not replaced): the
    // update does not delete the item that holds it.
    let inner_id = {
        let txn = version.transact();
        let m = txn.get_map("m").unwrap();
        let Some(Out::YMap(inner)) = m.get(&txn, "inner") else {
            panic!()
        };
        let yrs::BranchID::Nested(id) = inner.as_ref().id() else {
            panic!()
        };
        id
    };
    let decoded = Update::decode_v1(&update).unwrap();
    assert!(
        !decoded.delete_set().contains(&inner_id),
        "the nested map was replaced"
    );
}

#[test]
fn arrays_keep_surviving_elements() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let a = txn.get_or_insert_array("a");
        a.insert_range(txn, 0, [1, 2, 3]);
        let item = a.push_back(txn, MapPrelim::default());
        item.insert(txn, "title", "first");
        a.push_back(txn, ArrayPrelim::from([Any::from("x")]));
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let a = txn.get_or_insert_array("a");
        a.remove_range(txn, 0, 2);
        a.insert(txn, 0, "zero");
        let Some(Out::YMap(item)) = a.get(txn, 2) else {
            panic!()
        };
        item.insert(txn, "title", "changed");
        a.push_back(txn, TextPrelim::new("appended"));
    });
    assert_restores(&server_view(&doc), &version);
}

#[test]
fn xml_elements_attributes_and_formatted_text_are_restored() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let x = txn.get_or_insert_xml_fragment("x");
        let h = x.push_back(txn, XmlElementPrelim::empty("heading"));
        h.insert_attribute(txn, "level", Any::from(1));
        h.push_back(txn, XmlTextPrelim::new("Title"));
        let p = x.push_back(txn, XmlElementPrelim::empty("paragraph"));
        p.insert_attribute(txn, "align", "left");
        let text = p.push_back(txn, XmlTextPrelim::new("some strong words"));
        text.format(
            txn,
            5,
            6,
            attrs(&[("strong", Any::from(HashMap::<String, Any>::new()))]),
        );
        let list = x.push_back(txn, XmlElementPrelim::empty("list"));
        let li = list.push_back(txn, XmlElementPrelim::empty("item"));
        li.push_back(txn, XmlTextPrelim::new("one"));
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let x = txn.get_or_insert_xml_fragment("x");
        let Some(XmlOut::Element(h)) = x.get(txn, 0) else {
            panic!()
        };
        h.insert_attribute(txn, "level", Any::from(2));
        let Some(XmlOut::Element(p)) = x.get(txn, 1) else {
            panic!()
        };
        p.remove_attribute(txn, &"align");
        p.insert_attribute(txn, "id", "p1");
        let Some(XmlOut::Text(text)) = p.get(txn, 0) else {
            panic!()
        };
        text.format(txn, 0, 4, attrs(&[("em", Any::Bool(true))]));
        text.insert(txn, 17, " added");
        x.remove_range(txn, 2, 1);
        x.insert(txn, 0, XmlElementPrelim::empty("hr"));
        x.push_back(txn, XmlTextPrelim::new("trailing"));
    });
    let current = server_view(&doc);
    assert_restores(&current, &version);
    // The level attribute kept its type (a number, not "1").
    let x = current.get_or_insert_xml_fragment("x");
    let txn = current.transact();
    let Some(XmlOut::Element(h)) = x.get(&txn, 0) else {
        panic!()
    };
    assert_eq!(h.get_attribute(&txn, "level"), Some(Out::Any(Any::from(1))));
}

#[test]
fn roots_are_emptied_and_created() {
    let version = new_doc(1);
    edit(&version, |txn| {
        txn.get_or_insert_text("t")
            .insert(txn, 0, "only in the version");
        txn.get_or_insert_map("m").insert(txn, "k", "v");
    });
    let current = new_doc(2);
    edit(&current, |txn| {
        txn.get_or_insert_array("a").insert_range(txn, 0, [1, 2]);
        txn.get_or_insert_xml_fragment("x")
            .push_back(txn, XmlElementPrelim::empty("p"));
    });
    // Unrelated documents (a restore into another room): everything is
    // replaced by content.
    assert_restores(&server_view(&current), &server_view(&version));
    // An empty version empties everything.
    let empty = Doc::new();
    let current = server_view(&version);
    assert_restores(&current, &empty);
}

#[test]
fn concurrent_edits_survive_a_restore() {
    // The room's state when the restore starts ("before") and the version.
    let alice = new_doc(1);
    edit(&alice, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "version text");
    });
    let version = server_view(&alice);
    edit(&alice, |txn| {
        txn.get_or_insert_text("t").insert(txn, 12, " later edits");
    });
    let before = server_view(&alice);
    let restore = restore_update(&before, &version).unwrap().unwrap();

    // Bob types while the restore is computed and applied.
    let bob = fork(&before, 2);
    edit(&bob, |txn| {
        txn.get_or_insert_text("t").insert(txn, 0, "BOB ");
    });
    let bob_update = {
        let txn = bob.transact();
        txn.encode_state_as_update_v1(&before.transact().state_vector())
    };

    // Two replicas receive the updates in opposite orders.
    let one = server_view(&before);
    apply(&one, &restore);
    apply(&one, &bob_update);
    let two = server_view(&before);
    apply(&two, &bob_update);
    apply(&two, &restore);
    assert_eq!(doc_to_json(&one), doc_to_json(&two));
    assert_eq!(doc_to_json(&one)["t"], json!("BOB version text"));
}

#[test]
fn a_restore_can_be_undone_by_restoring_the_state_before_it() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.insert(txn, 0, "v1");
        txn.get_or_insert_map("m").insert(txn, "k", 1);
    });
    let v1 = server_view(&doc);
    edit(&doc, |txn| {
        let t = txn.get_or_insert_text("t");
        t.insert_with_attributes(txn, 2, " and v2", bold());
        txn.get_or_insert_map("m").insert(txn, "k", 2);
        txn.get_or_insert_array("a").push_back(txn, "v2");
    });
    let before = server_view(&doc);
    let room = server_view(&doc);
    assert_restores(&room, &v1);
    assert_restores(&room, &before);
    assert_restores(&room, &v1);
}

// ---------------------------------------------------------------------------
// Property test: random histories
// ---------------------------------------------------------------------------

/// One random edit, read from a few numbers so that proptest can shrink.
fn random_edit(doc: &Doc, op: (u8, u16, u16, u8)) {
    let (kind, a, b, c) = op;
    let t = doc.get_or_insert_text("t");
    let m = doc.get_or_insert_map("m");
    let arr = doc.get_or_insert_array("a");
    let x = doc.get_or_insert_xml_fragment("x");
    let mut txn = doc.transact_mut();
    let txn = &mut txn;
    // Within the Basic Multilingual Plane: a random UTF-16 offset never
    // falls inside a character (the unicode test covers the others).
    let words = ["a", "bc", "déf", "—", " ", "ghij", "\n"];
    let word = words[usize::from(c) % words.len()];
    let format = match c % 5 {
        0 => bold(),
        1 => attrs(&[("bold", Any::Null)]),
        2 => attrs(&[("color", Any::from(if a % 2 == 0 { "red" } else { "blue" }))]),
        3 => attrs(&[("italic", Any::Bool(true)), ("bold", Any::Bool(true))]),
        _ => Attrs::new(),
    };
    match kind % 16 {
        0 | 1 => {
            let len = t.len(txn);
            t.insert(txn, at(a, len), word);
        }
        2 => {
            let len = t.len(txn);
            t.insert_with_attributes(txn, at(a, len), word, format);
        }
        3 => {
            let len = t.len(txn);
            if len > 0 {
                let start = at(a, len - 1);
                let n = 1 + u32::from(b) % (len - start).min(6);
                t.remove_range(txn, start, n);
            }
        }
        4 => {
            let len = t.len(txn);
            if len > 0 {
                let start = at(a, len - 1);
                let n = 1 + u32::from(b) % (len - start);
                t.format(txn, start, n, format);
            }
        }
        5 => {
            let len = t.len(txn);
            let embed = Any::from(HashMap::from([(
                "img".to_string(),
                Any::from(i64::from(b)),
            )]));
            t.insert_embed_with_attributes(txn, at(a, len), embed, format);
        }
        6 => {
            let key = format!("k{}", b % 5);
            match c % 6 {
                0 => {
                    m.insert(txn, key, i64::from(a));
                }
                1 => {
                    m.insert(txn, key, word);
                }
                2 => {
                    m.insert(txn, key, Any::Null);
                }
                3 => {
                    let inner = m.insert(txn, key, MapPrelim::default());
                    inner.insert(txn, "v", i64::from(a));
                }
                4 => {
                    m.insert(txn, key, TextPrelim::new(word));
                }
                _ => {
                    m.insert(txn, key, ArrayPrelim::from([Any::from(i64::from(a))]));
                }
            }
        }
        7 => {
            m.remove(txn, &format!("k{}", b % 5));
        }
        8 => {
            // Edit inside a nested type of the map, whatever it is.
            let key = format!("k{}", b % 5);
            match m.get(txn, &key) {
                Some(Out::YMap(inner)) => {
                    inner.insert(txn, format!("n{}", c % 3), i64::from(a));
                }
                Some(Out::YText(text)) => {
                    let len = text.len(txn);
                    text.insert_with_attributes(txn, at(a, len), word, format);
                }
                Some(Out::YArray(list)) => {
                    let len = list.len(txn);
                    list.insert(txn, at(a, len), word);
                }
                _ => {}
            }
        }
        9 => {
            let len = arr.len(txn);
            match c % 3 {
                0 => {
                    arr.insert(txn, at(a, len), i64::from(b));
                }
                1 => {
                    let item = arr.insert(txn, at(a, len), MapPrelim::default());
                    item.insert(txn, "id", i64::from(b));
                }
                _ => {
                    arr.insert(txn, at(a, len), TextPrelim::new(word));
                }
            }
        }
        10 => {
            let len = arr.len(txn);
            if len > 0 {
                let start = at(a, len - 1);
                let n = 1 + u32::from(b) % (len - start).min(3);
                arr.remove_range(txn, start, n);
            }
        }
        11 => {
            let len = arr.len(txn);
            if len > 0 {
                match arr.get(txn, at(a, len - 1)) {
                    Some(Out::YMap(item)) => {
                        item.insert(txn, "id", i64::from(b));
                    }
                    Some(Out::YText(text)) => {
                        let tl = text.len(txn);
                        text.insert(txn, at(b, tl), word);
                    }
                    _ => {}
                }
            }
        }
        12 => {
            let len = x.len(txn);
            let tags = ["p", "h1", "li"];
            if c % 2 == 0 {
                let e = x.insert(
                    txn,
                    at(a, len),
                    XmlElementPrelim::empty(tags[usize::from(b) % 3]),
                );
                e.insert_attribute(txn, "n", i64::from(b));
                e.push_back(txn, XmlTextPrelim::new(word));
            } else {
                x.insert(txn, at(a, len), XmlTextPrelim::new(word));
            }
        }
        13 => {
            let len = x.len(txn);
            if len > 0 {
                x.remove_range(txn, at(a, len - 1), 1);
            }
        }
        14 => {
            // Edit inside an XML node: attributes, text, formatting, children.
            let len = x.len(txn);
            if len > 0 {
                match x.get(txn, at(a, len - 1)) {
                    Some(XmlOut::Element(e)) => match c % 3 {
                        0 => {
                            e.insert_attribute(txn, "class", word);
                        }
                        1 => {
                            e.remove_attribute(txn, &"n");
                        }
                        _ => {
                            let el = e.len(txn);
                            if let Some(XmlOut::Text(text)) = e.get(txn, 0) {
                                let tl = text.len(txn);
                                text.insert_with_attributes(txn, at(b, tl), word, format);
                            } else {
                                e.insert(txn, at(b, el), XmlElementPrelim::empty("span"));
                            }
                        }
                    },
                    Some(XmlOut::Text(text)) => format_xml_text(txn, &text, b, format),
                    _ => {}
                }
            }
        }
        _ => {
            let len = x.len(txn);
            if len > 0
                && let Some(XmlOut::Text(text)) = x.get(txn, at(a, len - 1))
            {
                let tl = text.len(txn);
                if tl > 0 {
                    text.remove_range(txn, at(b, tl - 1), 1);
                }
            }
        }
    }
}

fn format_xml_text(txn: &mut yrs::TransactionMut, text: &XmlTextRef, b: u16, format: Attrs) {
    let len = text.len(txn);
    if len > 0 {
        let start = at(b, len - 1);
        text.format(txn, start, len - start, format);
    }
}

/// An index within `0..=len` from a random number.
fn at(n: u16, len: u32) -> u32 {
    u32::from(n) % (len + 1)
}

fn edits() -> impl Strategy<Value = Vec<(u8, u16, u16, u8)>> {
    proptest::collection::vec(any::<(u8, u16, u16, u8)>(), 0..60)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// A history, a version taken in the middle, more edits by a second
    /// client: restoring the version reproduces it exactly, and restoring
    /// the state before the restore brings the later content back.
    #[test]
    fn restores_any_earlier_version(first in edits(), second in edits(), third in edits()) {
        let doc = new_doc(1);
        for op in first { random_edit(&doc, op); }
        let version = server_view(&doc);
        let other = fork(&doc, 2);
        for op in second { random_edit(&other, op); }
        apply(&doc, &state(&other));
        for op in third { random_edit(&doc, op); }
        let before = server_view(&doc);
        let room = server_view(&doc);
        assert_restores(&room, &version);
        assert_restores(&room, &before);
    }

    /// Unrelated documents (a restore into another room).
    #[test]
    fn restores_unrelated_content(first in edits(), second in edits()) {
        let a = new_doc(1);
        for op in first { random_edit(&a, op); }
        let b = new_doc(2);
        for op in second { random_edit(&b, op); }
        assert_restores(&server_view(&a), &server_view(&b));
    }
}

#[test]
fn typed_documents_work_as_well_as_server_views() {
    // The same as the property test's first case but on the typed
    // documents a client holds (roots declared, not undefined).
    let doc = new_doc(1);
    for op in [
        (0, 1, 2, 3),
        (4, 0, 3, 0),
        (6, 1, 1, 3),
        (12, 0, 0, 0),
        (9, 0, 0, 1),
    ] {
        random_edit(&doc, op);
    }
    let version = fork(&doc, 5);
    for op in [
        (3, 0, 2, 0),
        (7, 1, 1, 0),
        (13, 0, 0, 0),
        (14, 0, 1, 2),
        (11, 0, 0, 0),
    ] {
        random_edit(&doc, op);
    }
    assert_restores(&doc, &version);
}

#[test]
fn nested_arrays_and_fragments_in_maps() {
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let m = txn.get_or_insert_map("m");
        let frag = m.insert(txn, "frag", XmlFragmentPrelim::default());
        frag.push_back(txn, XmlTextPrelim::new("inside"));
        let nested: ArrayRef = m.insert(txn, "arr", ArrayPrelim::default());
        let inner: ArrayRef = nested.push_back(txn, ArrayPrelim::from([Any::from(1)]));
        inner.push_back(txn, MapPrelim::from([("z", Any::from(true))]));
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let m = txn.get_or_insert_map("m");
        let Some(Out::YXmlFragment(frag)) = m.get(txn, "frag") else {
            panic!()
        };
        frag.push_back(txn, XmlElementPrelim::empty("b"));
        let Some(Out::YArray(nested)) = m.get(txn, "arr") else {
            panic!()
        };
        let Some(Out::YArray(inner)) = nested.get(txn, 0) else {
            panic!()
        };
        inner.remove_range(txn, 0, 1);
        m.insert(txn, "frag2", XmlFragmentPrelim::default());
    });
    let current = server_view(&doc);
    assert_restores(&current, &version);
}

#[test]
fn reinserted_text_merges_with_a_reformatted_neighbour() {
    // "bc" in bold; "b" deleted, then "c" made italic too. The italic
    // marker goes in before the bold one, so re-inserting "b" in bold at
    // the start lands before it, and un-italicising "c" then leaves two
    // bold runs split by a redundant bold=null/bold=true pair unless the
    // restore merges them.
    let doc = new_doc(1);
    edit(&doc, |txn| {
        let x = txn.get_or_insert_xml_fragment("x");
        let text = x.push_back(txn, XmlTextPrelim::new(""));
        text.insert_with_attributes(txn, 0, "bc", bold());
    });
    let version = server_view(&doc);
    edit(&doc, |txn| {
        let x = txn.get_or_insert_xml_fragment("x");
        let Some(XmlOut::Text(text)) = x.get(txn, 0) else {
            panic!()
        };
        text.remove_range(txn, 0, 1);
        text.format(txn, 0, 1, attrs(&[("italic", Any::Bool(true))]));
    });
    let current = server_view(&doc);
    assert_restores(&current, &version);
    let x = current.get_or_insert_xml_fragment("x");
    let txn = current.transact();
    let Some(XmlOut::Text(text)) = x.get(&txn, 0) else {
        panic!()
    };
    assert_eq!(text.diff(&txn, YChange::identity).len(), 1, "one bold run");
}
