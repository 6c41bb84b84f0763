//! Plaintext pushes of every event family, in XML and in JSON, read into the right
//! `PushEvent` variant (fixtures follow WECHAT_SHOP.md §8.2, §8.3 and §14.5).
#![allow(clippy::unwrap_used)] // tests may unwrap

use wxshop::domain::Fen;
use wxshop::push::*;

const TOKEN: &str = "test-token";
const APPID: &str = "wx1234567890abcdef";
const HEAD_XML: &str = "<ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>\
<FromUserName><![CDATA[oWeChatTeamFixedOpenid]]></FromUserName>\
<CreateTime>1700000000</CreateTime><MsgType><![CDATA[event]]></MsgType>";
const HEAD_JSON: &str = r#""ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid","CreateTime":1700000000,"MsgType":"event""#;

fn cfg() -> PushConfig {
    PushConfig::new(APPID, TOKEN, None).unwrap()
}

/// Delivers a body as a genuine plaintext push and returns the typed event.
fn deliver(body: &str) -> PushEvent {
    let q = PushQuery::signed(TOKEN, "1700000009", "nonce");
    let msg = parse(&q, body.as_bytes(), &cfg()).unwrap();
    msg.event().unwrap()
}

fn xml(event: &str, body: &str) -> String {
    format!("<xml>{HEAD_XML}<Event><![CDATA[{event}]]></Event>{body}</xml>")
}

fn json(event: &str, body: &str) -> String {
    let sep = if body.is_empty() { "" } else { "," };
    format!(r#"{{{HEAD_JSON},"Event":"{event}"{sep}{body}}}"#)
}

/// The same event in both formats must read identically.
fn both(event: &str, xml_body: &str, json_body: &str) -> PushEvent {
    let a = deliver(&xml(event, xml_body));
    let b = deliver(&json(event, json_body));
    assert_eq!(a, b, "XML and JSON forms of {event} differ");
    assert_eq!(a.dedupe_key(), b.dedupe_key());
    assert_eq!(a.name(), event);
    a
}

fn head() -> EventHead {
    EventHead {
        to_user_name: "gh_0123456789ab".into(),
        from_user_name: "oWeChatTeamFixedOpenid".into(),
        create_time: 1_700_000_000,
    }
}

#[test]
fn product_audit_from_the_paired_example() {
    // §8.3, verbatim
    let xml = r#"<xml>
  <ToUserName><![CDATA[gh_0123456789ab]]></ToUserName>
  <FromUserName><![CDATA[oWeChatTeamFixedOpenid]]></FromUserName>
  <CreateTime>1700000000</CreateTime>
  <MsgType><![CDATA[event]]></MsgType>
  <Event><![CDATA[open_product_spu_audit]]></Event>
  <OpenProductSpuAudit>
    <out_product_id><![CDATA[SPU-1001]]></out_product_id>
    <product_id>31000000000000001</product_id>
    <status>4</status>
    <reject_reason><![CDATA[]]></reject_reason>
  </OpenProductSpuAudit>
</xml>"#;
    let json = r#"{"ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid","CreateTime":1700000000,
 "MsgType":"event","Event":"open_product_spu_audit",
 "OpenProductSpuAudit":{"out_product_id":"SPU-1001","product_id":31000000000000001,"status":4,"reject_reason":""}}"#;
    let expected = PushEvent::SpuAudit {
        head: head(),
        body: SpuAudit {
            out_product_id: "SPU-1001".into(),
            product_id: Some(31_000_000_000_000_001),
            status: 4,
            reject_reason: String::new(),
            spu_status: None,
        },
    };
    let a = deliver(xml);
    assert_eq!(a, expected);
    assert_eq!(deliver(json), expected);
    assert_eq!(
        a.dedupe_key(),
        "open_product_spu_audit:SPU-1001:31000000000000001:4:1700000000"
    );
    let PushEvent::SpuAudit { body, .. } = a else {
        unreachable!()
    };
    assert_eq!(body.verdict(), AuditVerdict::Approved);
}

#[test]
fn product_rejected_with_id_as_string_and_beyond_2_pow_53() {
    let ev = both(
        "open_product_spu_audit",
        "<OpenProductSpuAudit><out_product_id>SPU-2</out_product_id><product_id>18446744073709551615</product_id><status>3</status><reject_reason>blurry image</reject_reason><spu_status>0</spu_status></OpenProductSpuAudit>",
        r#""OpenProductSpuAudit":{"out_product_id":"SPU-2","product_id":"18446744073709551615","status":"3","reject_reason":"blurry image","spu_status":0}"#,
    );
    let PushEvent::SpuAudit { body, .. } = ev else {
        panic!("{ev:?}")
    };
    assert_eq!(body.product_id, Some(u64::MAX));
    assert_eq!(body.verdict(), AuditVerdict::Rejected);
    assert_eq!(body.reject_reason, "blurry image");
    assert_eq!(body.spu_status, Some(0));
}

#[test]
fn product_status_update_accepts_both_body_names() {
    let newer = both(
        "open_product_spu_status_update",
        "<OpenProductSpuStatusUpdate><out_product_id>SPU-1</out_product_id><product_id>31</product_id><status>13</status><reason>violation</reason></OpenProductSpuStatusUpdate>",
        r#""OpenProductSpuStatusUpdate":{"out_product_id":"SPU-1","product_id":31,"status":13,"reason":"violation"}"#,
    );
    let older = deliver(&xml(
        "open_product_spu_status_update",
        "<OpenProductSpuAudit><out_product_id>SPU-1</out_product_id><product_id>31</product_id><status>13</status><reject_reason>violation</reject_reason></OpenProductSpuAudit>",
    ));
    assert_eq!(newer, older);
    assert_eq!(
        newer,
        PushEvent::SpuStatusUpdate {
            head: head(),
            body: SpuStatusUpdate {
                out_product_id: "SPU-1".into(),
                product_id: Some(31),
                status: 13,
                reason: "violation".into(),
            }
        }
    );
}

#[test]
fn brand_and_category_audits() {
    let brand = both(
        "open_product_brand_audit",
        "<QualificationAuditResult><audit_id><![CDATA[RQAAAHIV-AQAAAAAqHTgA]]></audit_id><status>1</status><audit_type>1</audit_type><reject_reason></reject_reason><brand_id>2100000000</brand_id></QualificationAuditResult>",
        r#""QualificationAuditResult":{"audit_id":"RQAAAHIV-AQAAAAAqHTgA","status":1,"audit_type":1,"reject_reason":"","brand_id":2100000000}"#,
    );
    assert_eq!(
        brand,
        PushEvent::BrandAudit {
            head: head(),
            body: QualificationAudit {
                audit_id: "RQAAAHIV-AQAAAAAqHTgA".into(),
                status: 1,
                audit_type: Some(1),
                reject_reason: String::new(),
                brand_id: Some(2_100_000_000),
            }
        }
    );
    let category = both(
        "open_product_category_audit",
        "<QualificationAuditResult><audit_id>A-9</audit_id><status>9</status><audit_type>2</audit_type><reject_reason>licence expired</reject_reason></QualificationAuditResult>",
        r#""QualificationAuditResult":{"audit_id":"A-9","status":9,"audit_type":2,"reject_reason":"licence expired"}"#,
    );
    let PushEvent::CategoryAudit { body, .. } = &category else {
        panic!("{category:?}")
    };
    assert_eq!(body.verdict(), AuditVerdict::Rejected);
    assert_eq!(body.brand_id, None);
    assert_eq!(
        category.dedupe_key(),
        "open_product_category_audit:A-9:9:1700000000"
    );
}

#[test]
fn scene_group_audit_with_repeated_elements() {
    let ev = both(
        "open_product_scene_group_audit",
        "<SceneGroupAudit><group_id>1</group_id><name>视频号</name><reason></reason>\
         <scene_group_ext_list><ext_id>1</ext_id><status>1</status><name>客服售后</name></scene_group_ext_list>\
         <scene_group_ext_list><ext_id>2</ext_id><status>2</status><name>电商平台</name></scene_group_ext_list>\
         </SceneGroupAudit>",
        r#""SceneGroupAudit":{"group_id":1,"name":"视频号","reason":"","scene_group_ext_list":[{"ext_id":1,"status":1,"name":"客服售后"},{"ext_id":2,"status":2,"name":"电商平台"}]}"#,
    );
    let PushEvent::SceneGroupAudit { body, .. } = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(body.group_id, Some(1));
    assert_eq!(
        body.ext_list,
        vec![
            SceneGroupExt {
                ext_id: 1,
                status: 1,
                name: "客服售后".into()
            },
            SceneGroupExt {
                ext_id: 2,
                status: 2,
                name: "电商平台".into()
            },
        ]
    );
    assert_eq!(
        ev.dedupe_key(),
        "open_product_scene_group_audit:1:1=1,2=2:1700000000"
    );

    // a single repeated element is still a list
    let one = deliver(&xml(
        "open_product_scene_group_audit",
        "<SceneGroupAudit><group_id>1</group_id><scene_group_ext_list><ext_id>2</ext_id><status>0</status></scene_group_ext_list></SceneGroupAudit>",
    ));
    let PushEvent::SceneGroupAudit { body, .. } = one else {
        panic!()
    };
    assert_eq!(body.ext_list.len(), 1);
    assert_eq!(body.ext_list[0].ext_id, 2);
}

#[test]
fn account_register() {
    let ev = both(
        "open_product_account_register",
        "<OpenProductAccountRegister><status>10</status></OpenProductAccountRegister>",
        r#""OpenProductAccountRegister":{"status":10}"#,
    );
    assert_eq!(
        ev,
        PushEvent::AccountRegister {
            head: head(),
            body: AccountRegister { status: 10 }
        }
    );
}

#[test]
fn order_paid_from_the_paired_example() {
    // §8.3, verbatim
    let json = r#"{"ToUserName":"gh_0123456789ab","FromUserName":"oWeChatTeamFixedOpenid","CreateTime":1700000100,
 "MsgType":"event","Event":"open_product_order_pay",
 "order_info":{"out_order_id":"ORD-42","order_id":3302000000000000000,"transaction_id":"4200000000000000000000000000",
               "pay_time":"2023-11-15 06:15:00","amount":1990}}"#;
    let ev = deliver(json);
    let expected_body = OrderPay {
        order_id: Some(3_302_000_000_000_000_000),
        out_order_id: "ORD-42".into(),
        transaction_id: "4200000000000000000000000000".into(),
        pay_time: "2023-11-15 06:15:00".into(),
        amount: Some(Fen::new(1990).unwrap()),
        payer_amount: None,
        sp_openid: String::new(),
        promotion_detail_info: None,
    };
    let PushEvent::OrderPay { head: h, body } = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(h.create_time, 1_700_000_100);
    assert_eq!(body, &expected_body);
    assert_eq!(
        ev.dedupe_key(),
        "open_product_order_pay:3302000000000000000:ORD-42:4200000000000000000000000000:1700000100"
    );

    let from_xml = deliver(&xml(
        "open_product_order_pay",
        "<order_info><out_order_id>ORD-42</out_order_id><order_id>3302000000000000000</order_id><transaction_id>4200000000000000000000000000</transaction_id><pay_time>2023-11-15 06:15:00</pay_time><amount>1990</amount><payer_amount>1890</payer_amount><sp_openid>oSp</sp_openid>\
         <promotion_detail_info><promotion_detail_list><coupon_id>C1</coupon_id><amount>100</amount><goods_detail><goods_id>G1</goods_id></goods_detail><goods_detail><goods_id>G2</goods_id></goods_detail></promotion_detail_list></promotion_detail_info></order_info>",
    ));
    let PushEvent::OrderPay { body, .. } = from_xml else {
        panic!()
    };
    assert_eq!(body.payer_amount, Some(Fen::new(1890).unwrap()));
    assert_eq!(body.sp_openid, "oSp");
    let promo = body.promotion_detail_info.unwrap();
    assert_eq!(
        promo["promotion_detail_list"]["goods_detail"][1]["goods_id"],
        "G2"
    );
}

#[test]
fn order_settle_cancel_confirm_refund() {
    let settle = both(
        "open_product_order_settle",
        "<order_info><order_id>3302000000000000001</order_id><out_order_id>ORD-43</out_order_id><settle_no>S-1</settle_no><amount>1990</amount><settle_time>1700001000</settle_time></order_info>",
        r#""order_info":{"order_id":"3302000000000000001","out_order_id":"ORD-43","settle_no":"S-1","amount":1990,"settle_time":1700001000}"#,
    );
    assert_eq!(
        settle,
        PushEvent::OrderSettle {
            head: head(),
            body: OrderSettle {
                order_id: Some(3_302_000_000_000_000_001),
                out_order_id: "ORD-43".into(),
                settle_no: "S-1".into(),
                amount: Some(Fen::new(1990).unwrap()),
                settle_time: "1700001000".into(),
            }
        }
    );
    let order = OrderRef {
        order_id: Some(3_302_000_000_000_000_002),
        out_order_id: "ORD-44".into(),
    };
    for event in [
        "open_product_order_cancel",
        "open_product_order_confirm",
        "open_product_order_refund",
    ] {
        let ev = both(
            event,
            "<order_info><order_id>3302000000000000002</order_id><out_order_id>ORD-44</out_order_id></order_info>",
            r#""order_info":{"order_id":3302000000000000002,"out_order_id":"ORD-44"}"#,
        );
        let body = match &ev {
            PushEvent::OrderCancel { body, .. } if event.ends_with("cancel") => body,
            PushEvent::OrderConfirm { body, .. } if event.ends_with("confirm") => body,
            PushEvent::OrderRefund { body, .. } if event.ends_with("refund") => body,
            other => panic!("{event} → {other:?}"),
        };
        assert_eq!(body, &order);
        assert_eq!(
            ev.dedupe_key(),
            format!("{event}:3302000000000000002:ORD-44:1700000000")
        );
    }
}

#[test]
fn aftersale_new_order_from_the_paired_example() {
    let ev = both(
        "aftersale_new_order",
        // §8.3, verbatim
        "<aftersale_info><aftersale_id>4000000001000001</aftersale_id><order_id>3302000000000000000</order_id><out_order_id>ORD-42</out_order_id></aftersale_info>",
        r#""aftersale_info":{"aftersale_id":4000000001000001,"order_id":3302000000000000000,"out_order_id":"ORD-42"}"#,
    );
    assert_eq!(
        ev,
        PushEvent::AfterSale {
            head: head(),
            kind: AfterSaleEventKind::NewOrder,
            body: AfterSaleInfo {
                aftersale_id: Some(4_000_000_001_000_001),
                out_aftersale_id: String::new(),
                order_id: Some(3_302_000_000_000_000_000),
                out_order_id: "ORD-42".into(),
            }
        }
    );
}

#[test]
fn aftersale_user_cancel_from_the_real_log_shape() {
    // §8.1: the JSON shape from a production log, with an empty out_aftersale_id
    let ev = deliver(
        r#"{"ToUserName":"gh_..","FromUserName":"o..","CreateTime":1650534683,"MsgType":"event","Event":"aftersale_user_cancel","aftersale_info":{"aftersale_id":4000000001576183,"out_aftersale_id":""}}"#,
    );
    let PushEvent::AfterSale { kind, body, .. } = &ev else {
        panic!("{ev:?}")
    };
    assert_eq!(kind, &AfterSaleEventKind::UserCancel);
    assert_eq!(body.aftersale_id, Some(4_000_000_001_576_183));
    assert_eq!(body.out_aftersale_id, "");
    assert_eq!(
        ev.dedupe_key(),
        "aftersale_user_cancel:4000000001576183::::1650534683"
    );
}

#[test]
fn every_documented_aftersale_event() {
    let kinds = [
        ("aftersale_new_order", AfterSaleEventKind::NewOrder),
        ("aftersale_update_order", AfterSaleEventKind::UpdateOrder),
        ("aftersale_user_cancel", AfterSaleEventKind::UserCancel),
        (
            "aftersale_refund_success",
            AfterSaleEventKind::RefundSuccess,
        ),
        (
            "aftersale_wait_merchant_confirm_receipt",
            AfterSaleEventKind::WaitMerchantConfirmReceipt,
        ),
        (
            "aftersale_wait_merchant_offline_refund",
            AfterSaleEventKind::WaitMerchantOfflineRefund,
        ),
        (
            "aftersale_merchant_handle_refund_overdue",
            AfterSaleEventKind::MerchantHandleRefundOverdue,
        ),
        (
            "aftersale_merchant_handle_return_overdue",
            AfterSaleEventKind::MerchantHandleReturnOverdue,
        ),
        (
            "aftersale_merchant_confirm_receipt_overdue",
            AfterSaleEventKind::MerchantConfirmReceiptOverdue,
        ),
        (
            "aftersale_user_upload_return_info_overdue",
            AfterSaleEventKind::UserUploadReturnInfoOverdue,
        ),
        (
            "aftersale_user_modify_return_info",
            AfterSaleEventKind::UserModifyReturnInfo,
        ),
        (
            "aftersale_user_confirm_refund_certificate",
            AfterSaleEventKind::UserConfirmRefundCertificate,
        ),
        (
            "aftersale_user_apply_platform_judge_overdue",
            AfterSaleEventKind::UserApplyPlatformJudgeOverdue,
        ),
        (
            "aftersale_complaint_update_order_state",
            AfterSaleEventKind::ComplaintUpdateOrderState,
        ),
        (
            "aftersale_something_new",
            AfterSaleEventKind::Other("aftersale_something_new".into()),
        ),
    ];
    for (event, expected) in kinds {
        let ev = both(
            event,
            "<aftersale_info><aftersale_id>4000000001596225</aftersale_id><out_aftersale_id>AS-1</out_aftersale_id></aftersale_info>",
            r#""aftersale_info":{"aftersale_id":"4000000001596225","out_aftersale_id":"AS-1"}"#,
        );
        let PushEvent::AfterSale { kind, body, .. } = &ev else {
            panic!("{event} → {ev:?}")
        };
        assert_eq!(kind, &expected);
        assert_eq!(kind.name(), event);
        assert_eq!(body.aftersale_id, Some(4_000_000_001_596_225));
        assert_eq!(body.out_aftersale_id, "AS-1");
    }
}

#[test]
fn complaint_coupon_and_withdrawal() {
    let complaint = both(
        "complaint_notify",
        "<complaint_info><complaint_order_id>1000001</complaint_order_id><state>2</state><event>1</event></complaint_info>",
        r#""complaint_info":{"complaint_order_id":1000001,"state":2,"event":1}"#,
    );
    assert_eq!(
        complaint,
        PushEvent::Complaint {
            head: head(),
            body: Complaint {
                complaint_order_id: "1000001".into(),
                state: Some(2),
                event: Some(1),
            }
        }
    );

    let coupon = both(
        "open_product_receive_coupon",
        "<out_coupon_id>CP-1</out_coupon_id><request_id>R-9</request_id>",
        r#""out_coupon_id":"CP-1","request_id":"R-9""#,
    );
    assert!(coupon.needs_structured_reply());
    assert_eq!(
        coupon,
        PushEvent::ReceiveCoupon {
            head: head(),
            body: ReceiveCoupon {
                out_coupon_id: "CP-1".into(),
                request_id: "R-9".into(),
            }
        }
    );

    // §14.5: out_request_no is documented as a number; it is kept as text
    let withdraw = both(
        "withdraw_notify",
        "<withdraw_info><out_request_no>20231115000001</out_request_no><event>3</event></withdraw_info>",
        r#""withdraw_info":{"out_request_no":20231115000001,"event":3}"#,
    );
    assert!(!withdraw.needs_structured_reply());
    assert_eq!(
        withdraw,
        PushEvent::WithdrawNotify {
            head: head(),
            body: WithdrawNotify {
                out_request_no: "20231115000001".into(),
                event: Some(3),
            }
        }
    );
    assert_eq!(
        withdraw.dedupe_key(),
        "withdraw_notify:20231115000001:3:1700000000"
    );
}

#[test]
fn unknown_events_are_kept_whole() {
    let body = json(
        "trade_manage_remind_shipping",
        r#""msg":"please ship","transaction_id":"4200""#,
    );
    let ev = deliver(&body);
    let PushEvent::Unknown {
        event,
        raw,
        head: h,
    } = &ev
    else {
        panic!("{ev:?}")
    };
    assert_eq!(event, "trade_manage_remind_shipping");
    assert_eq!(raw["msg"], "please ship");
    assert_eq!(h.create_time, 1_700_000_000);
    let key = ev.dedupe_key();
    assert!(key.starts_with("trade_manage_remind_shipping:"), "{key}");
    assert!(key.ends_with(":1700000000"), "{key}");
    assert_eq!(key, deliver(&body).dedupe_key(), "stable across deliveries");

    // an `aftersale_*` name without `aftersale_info` stays unknown
    let ev = deliver(&xml("aftersale_mystery", "<x>1</x>"));
    assert!(matches!(ev, PushEvent::Unknown { .. }), "{ev:?}");

    // not an event at all (a customer-service text message)
    let text = "<xml><ToUserName>gh_1</ToUserName><FromUserName>oUser</FromUserName><CreateTime>1</CreateTime><MsgType>text</MsgType><Content>hi</Content></xml>";
    let PushEvent::Unknown { event, .. } = deliver(text) else {
        panic!()
    };
    assert_eq!(event, "msgtype:text");
}

#[test]
fn dedupe_key_changes_with_create_time() {
    let a = deliver(&json(
        "open_product_account_register",
        r#""OpenProductAccountRegister":{"status":2}"#,
    ));
    let b = deliver(
        &json(
            "open_product_account_register",
            r#""OpenProductAccountRegister":{"status":2}"#,
        )
        .replace("1700000000", "1700000001"),
    );
    assert_ne!(a.dedupe_key(), b.dedupe_key());
}

#[test]
fn malformed_known_events_are_errors_not_zeros() {
    let event_of = |body: &str| decode_message(body.as_bytes()).unwrap().event();
    assert_eq!(
        event_of(&json("open_product_spu_audit", r#""other":{}"#)),
        Err(EventError::MissingBody {
            event: "open_product_spu_audit".into(),
            element: "OpenProductSpuAudit"
        })
    );
    assert_eq!(
        event_of(&json(
            "open_product_spu_audit",
            r#""OpenProductSpuAudit":{"product_id":1}"#
        )),
        Err(EventError::MissingField {
            event: "open_product_spu_audit".into(),
            field: "status"
        })
    );
    // beyond u64
    assert!(matches!(
        event_of(&json(
            "open_product_spu_audit",
            r#""OpenProductSpuAudit":{"product_id":"18446744073709551616","status":4}"#
        )),
        Err(EventError::BadField {
            field: "product_id",
            ..
        })
    ));
    // negative and fractional ids
    for id in ["-1", "1.5", r#""12abc""#, "[1]"] {
        assert!(
            matches!(
                event_of(&json(
                    "aftersale_new_order",
                    &format!(r#""aftersale_info":{{"aftersale_id":{id}}}"#)
                )),
                Err(EventError::BadField {
                    field: "aftersale_id",
                    ..
                })
            ),
            "{id}"
        );
    }
    assert!(matches!(
        event_of(&json(
            "open_product_order_pay",
            r#""order_info":{"order_id":1,"amount":-5}"#
        )),
        Err(EventError::BadField {
            field: "amount",
            ..
        })
    ));
}
