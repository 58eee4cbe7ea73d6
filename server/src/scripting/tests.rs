use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::sandbox::{self, GLOBALS};
use super::*;

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

fn config(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    headers(pairs)
}

/// Runs `source`'s on_enqueue once against a small message.
fn enqueue(source: &str) -> Result<EnqueueDecision, ScriptError> {
    let h = headers(&[("tenant", "acme")]);
    let msg = ScriptMessage { queue: "orders", headers: ScriptHeaders::Map(&h), payload: br#"{"n":1}"# };
    test_on_enqueue(source, &msg, &NoConfig, ScriptLimits::default())
}

fn failure(source: &str) -> Result<Option<FailureDecision>, ScriptError> {
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "orders", headers: ScriptHeaders::Map(&h), payload: b"x" };
    test_on_failure(source, &msg, 2, "boom", &NoConfig, ScriptLimits::default())
}

fn returning(table: &str) -> String {
    format!("function on_enqueue(msg) return {table} end")
}

fn runtime_message(result: Result<EnqueueDecision, ScriptError>) -> String {
    match result {
        Err(ScriptError::Runtime { message, .. }) => message,
        other => panic!("expected a runtime error, got {other:?}"),
    }
}

// ---- sandbox ----

#[test]
fn escapes_are_blocked() {
    let attempts = [
        ("io", r#"io.open("/etc/hostname", "r")"#),
        ("io", r#"io.popen("id")"#),
        ("execute", r#"os.execute("true")"#),
        ("getenv", r#"os.getenv("HOME")"#),
        ("remove", r#"os.remove("/tmp/fila-script-test")"#),
        ("require", r#"require("os")"#),
        ("load", r#"load("return 1")()"#),
        ("loadstring", r#"loadstring("return 1")()"#),
        ("dofile", r#"dofile("/etc/hostname")"#),
        ("loadfile", r#"loadfile("/etc/hostname")"#),
        ("debug", r#"debug.getinfo(1)"#),
        ("dump", r#"string.dump(on_enqueue)"#),
        ("dump", r#"(""):dump()"#),
        ("package", r#"package.loadlib("libc.so.6", "system")"#),
        ("collectgarbage", r#"collectgarbage("count")"#),
        ("print", r#"print("hi")"#),
        ("coroutine", r#"coroutine.wrap(function() end)()"#),
    ];
    for (name, code) in attempts {
        let source = format!("function on_enqueue(msg) local r = {code} return nil end");
        let message = runtime_message(enqueue(&source));
        assert!(message.contains(name) && message.contains("nil value"), "{code}: {message}");
    }
}

#[test]
fn only_the_allowed_globals_exist() {
    let source = r#"
        local names = {}
        for k in pairs(_G) do names[#names + 1] = k end
        table.sort(names)
        local os_names = {}
        for k in pairs(os) do os_names[#os_names + 1] = k end
        table.sort(os_names)
        function on_enqueue(msg)
            return { fairness_key = table.concat(names, ",") .. "|" .. table.concat(os_names, ",") }
        end
    "#;
    let mut expected: Vec<&str> = GLOBALS.to_vec();
    expected.sort();
    let got = enqueue(source).unwrap().fairness_key.unwrap();
    assert_eq!(got, format!("{}|clock,time", expected.join(",")));
}

#[test]
fn bytecode_is_rejected() {
    let result = QueueScripts::compile(Some("\x1bLua\x54\x00 not really bytecode"), None, ScriptLimits::default());
    assert!(matches!(result, Err(ScriptError::Compile { .. })), "{result:?}");
}

#[test]
fn globals_are_isolated_between_queues_and_hooks() {
    let writer = r#"
        shared = "from a"
        string.upper = function() return "hijacked" end
        function on_enqueue(msg) leaked = "yes" return nil end
    "#;
    let reader = r#"
        function on_enqueue(msg)
            return { fairness_key = tostring(shared) .. "/" .. tostring(leaked) .. "/" .. string.upper("b") }
        end
        function on_failure(msg) return nil end
    "#;
    let mut a = QueueScripts::compile(Some(writer), Some(reader), ScriptLimits::default()).unwrap();
    let mut b = QueueScripts::compile(Some(reader), None, ScriptLimits::default()).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    a.on_enqueue(&msg, &NoConfig).unwrap();
    let seen = b.on_enqueue(&msg, &NoConfig).unwrap();
    assert_eq!(seen.fairness_key.as_deref(), Some("nil/nil/B"));
    // The same queue's other hook has a VM of its own too.
    assert_eq!(a.on_failure(&msg, 1, "e", &NoConfig).unwrap(), None);
    let vm_globals = a.on_failure.as_ref().unwrap().vm.lua().globals();
    assert!(vm_globals.get::<Option<String>>("shared").unwrap().is_none());
}

#[test]
fn finalizers_cannot_be_set() {
    let source = r#"function on_enqueue(msg) setmetatable({}, { __gc = function() end }) end"#;
    assert!(runtime_message(enqueue(source)).contains("__gc"));
    // Other metatables work.
    let source = r#"
        function on_enqueue(msg)
            local t = setmetatable({}, { __index = function() return "k" end })
            return { fairness_key = t.anything }
        end
    "#;
    assert_eq!(enqueue(source).unwrap().fairness_key.as_deref(), Some("k"));
}

// ---- limits ----

fn assert_timeout(source: &str) {
    let started = Instant::now();
    let result = enqueue(source);
    let elapsed = started.elapsed();
    assert!(
        matches!(result, Err(ScriptError::Timeout { limit, .. }) if limit == DEFAULT_TIMEOUT),
        "{source}: {result:?}"
    );
    assert!(elapsed < Duration::from_millis(50), "{source}: stopped only after {elapsed:?}");
}

#[test]
fn infinite_loops_are_stopped() {
    assert_timeout("function on_enqueue(msg) while true do end end");
    assert_timeout("function on_enqueue(msg) local function f() return f() end return f() end");
}

#[test]
fn pcall_cannot_swallow_the_time_budget() {
    assert_timeout("function on_enqueue(msg) while true do pcall(function() while true do end end) end end");
    assert_timeout(
        "function on_enqueue(msg) while true do xpcall(function() while true do end end, function(e) return e end) end end",
    );
    // An ordinary error is still caught by pcall.
    let source =
        r#"function on_enqueue(msg) local ok, e = pcall(error, "x") return { fairness_key = tostring(ok) } end"#;
    assert_eq!(enqueue(source).unwrap().fairness_key.as_deref(), Some("false"));
}

#[test]
fn top_level_code_is_bounded_too() {
    let started = Instant::now();
    let result = QueueScripts::compile(Some("while true do end"), None, ScriptLimits::default());
    assert!(started.elapsed() < Duration::from_millis(50));
    match result {
        Err(ScriptError::Compile { message, .. }) => assert!(message.contains("limit"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn unbounded_allocation_is_stopped() {
    let growing = r#"
        function on_enqueue(msg)
            local t = {}
            for i = 1, 1e12 do t[i] = "item " .. i end
        end
    "#;
    let huge = r#"function on_enqueue(msg) return { fairness_key = string.rep("x", 1e9) } end"#;
    let limits = ScriptLimits { timeout: Duration::from_secs(5), ..ScriptLimits::default() };
    for source in [growing, huge] {
        let h = headers(&[]);
        let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
        let result = test_on_enqueue(source, &msg, &NoConfig, limits);
        assert!(
            matches!(result, Err(ScriptError::Memory { limit, .. }) if limit == DEFAULT_MEMORY_BYTES),
            "{result:?}"
        );
    }
}

#[test]
fn a_vm_recovers_after_a_memory_error() {
    let source = r#"
        function on_enqueue(msg)
            if msg.headers.big then local s = string.rep("x", 64 * 1024 * 1024) end
            return { weight = 7 }
        end
    "#;
    let mut scripts = QueueScripts::compile(Some(source), None, ScriptLimits::default()).unwrap();
    let big = headers(&[("big", "1")]);
    let small = headers(&[]);
    let r =
        scripts.on_enqueue(&ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&big), payload: b"x" }, &NoConfig);
    assert!(matches!(r, Err(ScriptError::Memory { .. })), "{r:?}");
    let r = scripts
        .on_enqueue(&ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&small), payload: b"x" }, &NoConfig);
    assert_eq!(r.unwrap().weight, Some(7));
    let stats = scripts.stats(ScriptHook::OnEnqueue).unwrap();
    assert_eq!((stats.calls, stats.memory_errors, stats.consecutive_failures), (2, 1, 0));
}

// ---- breaker ----

#[test]
fn breaker_opens_after_three_failures_and_recovers_after_cooldown() {
    let source = r#"
        function on_enqueue(msg)
            if fila.get("fail") then error("failing on purpose") end
            return { weight = 2 }
        end
    "#;
    let cooldown = Duration::from_millis(200);
    let limits = ScriptLimits { breaker_cooldown: cooldown, ..ScriptLimits::default() };
    let mut scripts = QueueScripts::compile(Some(source), None, limits).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    let failing = config(&[("fail", "1")]);
    let healthy = config(&[]);

    for _ in 0..3 {
        assert!(matches!(scripts.on_enqueue(&msg, &failing), Err(ScriptError::Runtime { .. })));
    }
    let opened = Instant::now();
    // Open: not called, even though the script would now succeed.
    assert_eq!(scripts.on_enqueue(&msg, &healthy), Err(ScriptError::BreakerOpen { hook: ScriptHook::OnEnqueue }));
    let stats = scripts.stats(ScriptHook::OnEnqueue).unwrap();
    assert_eq!((stats.calls, stats.errors, stats.skipped, stats.breaker), (3, 3, 1, BreakerState::Open));

    // Half-open trial fails: open again.
    std::thread::sleep(cooldown.saturating_sub(opened.elapsed()) + Duration::from_millis(5));
    assert_eq!(scripts.stats(ScriptHook::OnEnqueue).unwrap().breaker, BreakerState::HalfOpen);
    assert!(matches!(scripts.on_enqueue(&msg, &failing), Err(ScriptError::Runtime { .. })));
    assert_eq!(scripts.stats(ScriptHook::OnEnqueue).unwrap().breaker, BreakerState::Open);
    assert!(matches!(scripts.on_enqueue(&msg, &healthy), Err(ScriptError::BreakerOpen { .. })));

    // Trial succeeds: closed.
    std::thread::sleep(cooldown + Duration::from_millis(5));
    assert_eq!(scripts.on_enqueue(&msg, &healthy).unwrap().weight, Some(2));
    let stats = scripts.stats(ScriptHook::OnEnqueue).unwrap();
    assert_eq!((stats.calls, stats.errors, stats.skipped, stats.breaker), (5, 4, 2, BreakerState::Closed));
    assert_eq!(scripts.on_enqueue(&msg, &healthy).unwrap().weight, Some(2));
}

#[test]
fn timeouts_and_bad_returns_count_as_failures() {
    let source = r#"
        function on_failure(msg, attempts, err)
            if err == "loop" then while true do end end
            return { action = "later" }
        end
    "#;
    let mut scripts = QueueScripts::compile(None, Some(source), ScriptLimits::default()).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    assert!(matches!(scripts.on_failure(&msg, 1, "loop", &NoConfig), Err(ScriptError::Timeout { .. })));
    assert!(matches!(scripts.on_failure(&msg, 1, "x", &NoConfig), Err(ScriptError::BadReturn { .. })));
    assert!(matches!(scripts.on_failure(&msg, 1, "loop", &NoConfig), Err(ScriptError::Timeout { .. })));
    assert!(matches!(scripts.on_failure(&msg, 1, "x", &NoConfig), Err(ScriptError::BreakerOpen { .. })));
    let stats = scripts.stats(ScriptHook::OnFailure).unwrap();
    assert_eq!((stats.calls, stats.timeouts, stats.bad_returns, stats.skipped), (3, 2, 1, 1));
    assert_eq!(stats.breaker, BreakerState::Open);
    // The other hook is unaffected (and absent here).
    assert_eq!(scripts.stats(ScriptHook::OnEnqueue), None);
}

// ---- validation at submission ----

#[test]
fn syntax_errors_name_the_line() {
    let source = "function on_enqueue(msg)\n  local w = 1\n  return { weight = }\nend\n";
    match QueueScripts::compile(Some(source), None, ScriptLimits::default()) {
        Err(ScriptError::Compile { hook: ScriptHook::OnEnqueue, message }) => {
            assert!(message.starts_with("on_enqueue:3:"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let source = "function on_failure(msg)\n  return {\n";
    match QueueScripts::compile(None, Some(source), ScriptLimits::default()) {
        Err(ScriptError::Compile { hook: ScriptHook::OnFailure, message }) => {
            assert!(message.starts_with("on_failure:3:"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn top_level_errors_are_rejected_with_their_line() {
    match QueueScripts::compile(Some("\n\nerror('not today')"), None, ScriptLimits::default()) {
        Err(ScriptError::Compile { message, .. }) => assert!(message.contains("on_enqueue:3: not today"), "{message}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn missing_hooks_are_rejected() {
    for source in ["function on_enq(msg) end", "on_enqueue = 5", "local function on_enqueue(msg) end", ""] {
        let result = QueueScripts::compile(Some(source), None, ScriptLimits::default());
        assert_eq!(result.unwrap_err(), ScriptError::MissingHook { hook: ScriptHook::OnEnqueue }, "{source}");
    }
    // Each script must define its own hook.
    let result = QueueScripts::compile(None, Some("function on_enqueue(msg) end"), ScriptLimits::default());
    assert_eq!(result.unwrap_err(), ScriptError::MissingHook { hook: ScriptHook::OnFailure });
}

// ---- on_enqueue ----

#[test]
fn on_enqueue_sees_the_message() {
    let source = r#"
        function on_enqueue(msg)
            return {
                fairness_key = msg.queue .. ":" .. msg.headers.tenant .. ":" .. msg.payload_size .. ":" .. tostring(msg.payload),
            }
        end
    "#;
    assert_eq!(enqueue(source).unwrap().fairness_key.as_deref(), Some("orders:acme:7:nil"));
    let opted_in = format!("wants_payload = true\n{source}");
    assert_eq!(enqueue(&opted_in).unwrap().fairness_key.as_deref(), Some(r#"orders:acme:7:{"n":1}"#));
    let scripts = QueueScripts::compile(
        Some(&opted_in),
        Some(source.replace("on_enqueue", "on_failure").as_str()),
        ScriptLimits::default(),
    )
    .unwrap();
    assert!(scripts.wants_payload(ScriptHook::OnEnqueue));
    assert!(!scripts.wants_payload(ScriptHook::OnFailure));
}

#[test]
fn on_enqueue_decisions() {
    assert_eq!(enqueue("function on_enqueue(msg) end").unwrap(), EnqueueDecision::default());
    assert_eq!(enqueue(&returning("{}")).unwrap(), EnqueueDecision::default());
    assert_eq!(
        enqueue(&returning(r#"{ fairness_key = "t1", weight = 10 / 2, throttle_keys = { "a", "b" } }"#)).unwrap(),
        EnqueueDecision {
            fairness_key: Some("t1".into()),
            weight: Some(5),
            throttle_keys: Some(vec!["a".into(), "b".into()])
        }
    );
    assert_eq!(enqueue(&returning("{ throttle_keys = {} }")).unwrap().throttle_keys, Some(vec![]));
    assert_eq!(enqueue(&returning("{ weight = 1000000 }")).unwrap().weight, Some(1_000_000));
    let max_key = format!(
        "{{ fairness_key = string.rep('k', 256), throttle_keys = {{ {} }} }}",
        vec!["string.rep('t', 256)"; 16].join(", ")
    );
    let d = enqueue(&returning(&max_key)).unwrap();
    assert_eq!((d.fairness_key.unwrap().len(), d.throttle_keys.unwrap().len()), (256, 16));
}

#[test]
fn bad_enqueue_returns_are_rejected() {
    // A huge table is rejected (validation reads only the first few entries).
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    let limits = ScriptLimits { timeout: Duration::from_secs(5), ..ScriptLimits::default() };
    for (source, expected) in [
        ("local t = {} for i = 1, 100000 do t['k' .. i] = i end function on_enqueue(msg) return t end", "unknown field"),
        (
            "local t = {} for i = 1, 100000 do t[i] = 'k' end function on_enqueue(msg) return { throttle_keys = t } end",
            "more than 16",
        ),
    ] {
        let result = test_on_enqueue(source, &msg, &NoConfig, limits);
        assert!(matches!(&result, Err(ScriptError::BadReturn { message, .. }) if message.contains(expected)), "{result:?}");
    }
    let cases = [
        ("5", "expected a table or nil, got a number"),
        (r#""k""#, "got a string"),
        ("{ weight = 0 }", "weight 0 is out of range"),
        ("{ weight = 1000001 }", "out of range"),
        ("{ weight = -3 }", "out of range"),
        ("{ weight = 2.5 }", "weight must be an integer"),
        (r#"{ weight = "3" }"#, "weight must be an integer, got a string"),
        (r#"{ fairness_key = "" }"#, "fairness_key must be 1 to 256 bytes"),
        ("{ fairness_key = string.rep('k', 257) }", "fairness_key must be 1 to 256 bytes"),
        ("{ fairness_key = 5 }", "fairness_key must be a string"),
        ("{ fairness_key = '\\255' }", "valid UTF-8"),
        (r#"{ throttle_keys = "a" }"#, "throttle_keys must be an array"),
        (r#"{ throttle_keys = { x = "a" } }"#, "throttle_keys must be an array"),
        (r#"{ throttle_keys = { [1] = "a", [3] = "c" } }"#, "without holes"),
        (r#"{ throttle_keys = { "" } }"#, "throttle_keys[1] must be 1 to 256 bytes"),
        (r#"{ throttle_keys = { "a", 5 } }"#, "throttle_keys[2] must be a string"),
        ("{ throttle_keys = { string.rep('t', 257) } }", "1 to 256 bytes"),
        (r#"{ fairnes_key = "t" }"#, "unknown field 'fairnes_key'"),
        (r#"{ "t" }"#, "found a number key"),
    ];
    for (table, expected) in cases {
        match enqueue(&returning(table)) {
            Err(ScriptError::BadReturn { hook: ScriptHook::OnEnqueue, message }) => {
                assert!(message.contains(expected), "{table}: {message}")
            }
            other => panic!("{table}: {other:?}"),
        }
    }
    let too_many = format!("{{ throttle_keys = {{ {} }} }}", vec!["'t'"; 17].join(", "));
    assert!(
        matches!(enqueue(&returning(&too_many)), Err(ScriptError::BadReturn { message, .. }) if message.contains("more than 16"))
    );
}

// ---- on_failure ----

#[test]
fn on_failure_sees_attempts_and_error() {
    let source = r#"
        function on_failure(msg, attempts, err)
            if math.type(attempts) == "integer" and err == "boom" and msg.queue == "orders" then
                return { action = "retry", delay_ms = attempts * 1000 }
            end
            return { action = "dlq" }
        end
    "#;
    assert_eq!(failure(source).unwrap(), Some(FailureDecision::Retry { delay: Duration::from_secs(2) }));
}

#[test]
fn on_failure_decisions() {
    let f = |table: &str| failure(&format!("function on_failure(msg, attempts, err) return {table} end"));
    assert_eq!(f(r#"{ action = "dlq" }"#).unwrap(), Some(FailureDecision::DeadLetter));
    assert_eq!(
        f(r#"{ action = "retry", delay_ms = 0 }"#).unwrap(),
        Some(FailureDecision::Retry { delay: Duration::ZERO })
    );
    assert_eq!(
        f(r#"{ action = "retry", delay_ms = 7 * 24 * 3600 * 1000 }"#).unwrap(),
        Some(FailureDecision::Retry { delay: MAX_RETRY_DELAY })
    );
    assert_eq!(f("nil").unwrap(), None);
    let bad = [
        (r#"{ action = "later" }"#, "action must be \"retry\" or \"dlq\""),
        ("{ action = 1 }", "action must be"),
        (r#"{ action = "retry" }"#, "needs delay_ms"),
        (r#"{ action = "retry", delay_ms = -1 }"#, "out of range"),
        (r#"{ action = "retry", delay_ms = 7 * 24 * 3600 * 1000 + 1 }"#, "out of range"),
        (r#"{ action = "retry", delay_ms = 1.5 }"#, "delay_ms must be an integer"),
        (r#"{ action = "dlq", delay_ms = 5 }"#, "takes no delay_ms"),
        ("{ delay_ms = 5 }", "has no action"),
        (r#"{ action = "dlq", why = "x" }"#, "unknown field 'why'"),
        ("true", "expected a table or nil"),
    ];
    for (table, expected) in bad {
        match f(table) {
            Err(ScriptError::BadReturn { hook: ScriptHook::OnFailure, message }) => {
                assert!(message.contains(expected), "{table}: {message}")
            }
            other => panic!("{table}: {other:?}"),
        }
    }
}

// ---- helpers ----

#[test]
fn fila_get_reads_the_config_of_the_call() {
    let source = r#"
        local get = fila.get -- a kept reference works too
        function on_enqueue(msg)
            return { fairness_key = get("tenant") or "none", weight = tonumber(fila.get("weight") or "1") }
        end
    "#;
    let mut scripts = QueueScripts::compile(Some(source), None, ScriptLimits::default()).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    let d = scripts.on_enqueue(&msg, &config(&[("tenant", "acme"), ("weight", "4")])).unwrap();
    assert_eq!((d.fairness_key.as_deref(), d.weight), (Some("acme"), Some(4)));
    let d = scripts.on_enqueue(&msg, &NoConfig).unwrap();
    assert_eq!((d.fairness_key.as_deref(), d.weight), (Some("none"), Some(1)));
    let mut btree = std::collections::BTreeMap::new();
    btree.insert("tenant".to_string(), "globex".to_string());
    assert_eq!(scripts.on_enqueue(&msg, &btree).unwrap().fairness_key.as_deref(), Some("globex"));

    assert!(
        runtime_message(enqueue("function on_enqueue(msg) fila.get(5) end")).contains("fila.get expects a string key")
    );
    // Exactly one value, like any function returning one.
    let source = r##"function on_enqueue(msg)
        local t = {}
        table.insert(t, fila.get("missing") or "x")
        table.insert(t, fila.json_decode("1"))
        return { weight = select("#", fila.get("missing")) + select("#", fila.json_decode("2")) + #t }
    end"##;
    assert_eq!(enqueue(source).unwrap().weight, Some(4));
}

#[test]
fn fila_json_decode() {
    let source = r#"
        wants_payload = true
        function on_enqueue(msg)
            local doc = fila.json_decode(msg.payload)
            local arr = fila.json_decode('[1, 2.5, "x", true, null, {"a": {"b": [7]}}]')
            assert(math.type(doc.n) == "integer" and doc.n == 1)
            assert(arr[1] == 1 and arr[2] == 2.5 and arr[3] == "x" and arr[4] == true and arr[5] == nil)
            assert(arr[6].a.b[1] == 7)
            assert(fila.json_decode("null") == nil and fila.json_decode('"s"') == "s")
            return { weight = doc.n + 1 }
        end
    "#;
    assert_eq!(enqueue(source).unwrap().weight, Some(2));
    let message = runtime_message(enqueue(r#"function on_enqueue(msg) fila.json_decode("{oops") end"#));
    assert!(message.contains("fila.json_decode: invalid JSON") && message.contains("line 1 column 2"), "{message}");
    let message = runtime_message(enqueue("function on_enqueue(msg) fila.json_decode({}) end"));
    assert!(message.contains("expects a string, got table"), "{message}");
    // Errors can be handled by the script, and are plain strings naming the line.
    let source = r#"function on_enqueue(msg)
        local ok, e = pcall(function() local v = fila.json_decode("[") return v end)
        return { fairness_key = tostring(ok) .. " " .. type(e) .. " " .. e }
    end"#;
    let key = enqueue(source).unwrap().fairness_key.unwrap();
    assert!(key.starts_with("false string on_enqueue:2: fila.json_decode: invalid JSON: EOF"), "{key}");
    let source = r#"function on_enqueue(msg)
        local ok, e = pcall(function() local v = fila.get({}) return v end)
        return { fairness_key = e }
    end"#;
    assert_eq!(
        enqueue(source).unwrap().fairness_key.as_deref(),
        Some("on_enqueue:2: fila.get expects a string key, got table")
    );
}

#[test]
fn safe_clock_functions_are_available() {
    let source =
        r#"function on_enqueue(msg) assert(os.time() > 1600000000 and os.clock() >= 0) return { weight = 1 } end"#;
    assert_eq!(enqueue(source).unwrap().weight, Some(1));
}

// ---- compile once ----

#[test]
fn scripts_are_loaded_once_and_reused() {
    let source = r#"
        loads = (loads or 0) + 1
        local calls = 0
        function on_enqueue(msg)
            calls = calls + 1
            return { weight = loads * 100 + calls }
        end
    "#;
    let mut scripts = QueueScripts::compile(Some(source), None, ScriptLimits::default()).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    let weights: Vec<_> = (0..3).map(|_| scripts.on_enqueue(&msg, &NoConfig).unwrap().weight.unwrap()).collect();
    assert_eq!(weights, [101, 102, 103]);
}

#[test]
fn queues_without_scripts_decide_nothing() {
    let mut scripts = QueueScripts::compile(None, None, ScriptLimits::default()).unwrap();
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    assert_eq!(scripts.on_enqueue(&msg, &NoConfig).unwrap(), EnqueueDecision::default());
    assert_eq!(scripts.on_failure(&msg, 3, "e", &NoConfig).unwrap(), None);
    assert!(!scripts.has(ScriptHook::OnEnqueue) && scripts.stats(ScriptHook::OnFailure).is_none());
}

#[test]
fn default_limits_are_documented_values() {
    let limits = ScriptLimits::default();
    assert_eq!(limits.timeout, Duration::from_millis(5));
    assert_eq!(limits.memory_bytes, 8 * 1024 * 1024);
    assert_eq!(limits.breaker_failures, 3);
    assert_eq!(limits.breaker_cooldown, Duration::from_secs(10));
}

#[test]
fn json_decode_counts_against_the_memory_limit() {
    let limits = ScriptLimits { memory_bytes: 512 * 1024, ..ScriptLimits::default() };
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    // 64,000 and 160,000 bytes of JSON, each decoding to far more than
    // 512 KiB (the limit is in force for every allocation while building).
    for copies in [8_000, 20_000] {
        let source = format!(
            r#"local doc = "[" .. string.rep("[1,2,3],", {copies}) .. "0]"
            function on_enqueue(msg) local t = fila.json_decode(doc) return {{ weight = #t }} end"#
        );
        let result = test_on_enqueue(&source, &msg, &NoConfig, limits);
        assert!(matches!(result, Err(ScriptError::Memory { .. })), "{copies}: {result:?}");
    }
    // The same document fits under the default limit.
    let source = r#"local doc = "[" .. string.rep("[1,2,3],", 8000) .. "0]"
        function on_enqueue(msg) local t = fila.json_decode(doc) return { weight = #t } end"#;
    assert_eq!(test_on_enqueue(source, &msg, &NoConfig, ScriptLimits::default()).unwrap().weight, Some(8001));
}

#[test]
fn error_values_of_any_type_are_reported() {
    for (code, expected) in [
        (r#"error("plain")"#, "on_enqueue:1: plain"),
        (r#"error("no position", 0)"#, "no position"),
        ("error({ code = 7 })", "table"),
        ("error()", "nil"),
        ("local x = nil; return x.y", "attempt to index a nil value (local 'x')"),
    ] {
        let message = runtime_message(enqueue(&format!("function on_enqueue(msg) {code} end")));
        assert!(message.contains(expected), "{code}: {message}");
        assert!(!message.contains("stack traceback"), "{code}: {message}");
    }
}

#[test]
fn unbounded_recursion_is_stopped() {
    let started = Instant::now();
    let result = enqueue("function on_enqueue(msg) local function f() return 1 + f() end return f() end");
    // Whichever limit it reaches first (time, memory or Lua's stack size).
    assert!(
        matches!(&result, Err(ScriptError::Timeout { .. } | ScriptError::Memory { .. } | ScriptError::Runtime { .. })),
        "{result:?}"
    );
    assert!(started.elapsed() < Duration::from_millis(100), "{:?}", started.elapsed());
}

// ---- library functions that loop in C ----

/// Evaluates each expression in a stock Lua VM and in a script VM, and
/// compares what they return or the error they raise.
fn assert_same_as_stock_lua(cases: &[&str]) {
    const SERIALIZE: &str = r#"
        local function ser(v, depth)
            if type(v) == "table" then
                if depth > 3 then return "{...}" end
                local keys = {}
                for k in pairs(v) do keys[#keys + 1] = k end
                table.sort(keys, function(a, b) return tostring(a) < tostring(b) end)
                local parts = {}
                for _, k in ipairs(keys) do parts[#parts + 1] = tostring(k) .. "=" .. ser(v[k], depth + 1) end
                return "{" .. table.concat(parts, ",") .. "}"
            end
            return type(v) .. ":" .. tostring(v) .. ":" .. (math.type(v) or "")
        end
        return function(f)
            local results = table.pack(pcall(f))
            if not results[1] then
                -- Drop the position prefix; the message itself must match.
                return "error: " .. tostring(results[2]):gsub("^[^:]*:%d+: ", "")
            end
            local parts = {}
            for i = 2, results.n do parts[#parts + 1] = ser(results[i], 0) end
            return table.concat(parts, " | ")
        end
    "#;
    let stock = mlua::Lua::new();
    let vm = sandbox::Vm::load(ScriptHook::OnEnqueue, "function on_enqueue() end", &ScriptLimits::default()).unwrap();
    let run = |lua: &mlua::Lua, case: &str| -> String {
        let wrap: mlua::Function = lua.load(SERIALIZE).set_name("=ser").eval().unwrap();
        let f: mlua::Function = lua.load(format!("return function() {case} end")).set_name("=t").eval().unwrap();
        wrap.call::<String>(f).unwrap()
    };
    // The script VM's functions are the budgeted ones, not Lua's own.
    let string: mlua::Table = vm.lua().globals().get("string").unwrap();
    let table: mlua::Table = vm.lua().globals().get("table").unwrap();
    for f in [string.get::<mlua::Function>("find").unwrap(), table.get::<mlua::Function>("move").unwrap()] {
        assert_eq!(f.info().what, "Lua");
    }
    for case in cases {
        let expected = run(&stock, case);
        let got = run(vm.lua(), case);
        assert_eq!(got, expected, "{case}");
    }
}

#[test]
fn pattern_functions_behave_like_lua() {
    let mut cases = Vec::new();
    let finds: &[&str] = &[
        r#""hello world", "o w""#,
        r#""hello world", "o", 6"#,
        r#""hello", "l+""#,
        r#""hello", "^h""#,
        r#""hello", "^e""#,
        r#""hello", "o$""#,
        r#""hello", "l$""#,
        r#""a$b", "$b""#,
        r#""hello", "l*""#,
        r#""hello", "x*""#,
        r#""hello", ".-l""#,
        r#""hello", "(h)(e)""#,
        r#""hello", "()ll()""#,
        r#""key=value", "(%w+)=(%w+)""#,
        r#""  trim me  ", "^%s*(.-)%s*$""#,
        r#""THE (quick) fox", "%((%a+)%)""#,
        r#""f(a(b)c)d", "%b()""#,
        r#""f(a(b c)d", "%b()""#,
        r#""THE (quick) fox", "%f[%a]%a+""#,
        r#""hello", "%f[%l]""#,
        r#""hello hello", "(l+)o %a*%1""#,
        r#""abab", "(ab)%1""#,
        r#""abc", "[a-b]+""#,
        r#""abc", "[^a]+""#,
        r#""a]b", "[]]""#,
        r#""a-b", "[a%-]+""#,
        r#""x^y", "[%^x]+""#,
        r#""a-z", "[%a-]+""#,
        r#""a-z", "[a-]+""#,
        r#""2024-01-02", "(%d+)-(%d+)-(%d+)""#,
        r#""a.b", "%.""#,
        r#""a+b", "a+b", 1, true"#,
        r#""a+b", "+", 1, true"#,
        r#""a+b", "+", 1, 1"#,
        r#""abc", "", 10"#,
        r#""abc", "", 4"#,
        r#""abc", "", -1"#,
        r#""abc", "b", -10"#,
        r#""abc", "c", 0"#,
        r#""abc", "c", 2.0"#,
        r#""abc", "c", "2""#,
        r#""", """#,
        r#""aaa", "a?a?a?aaa""#,
        r#""ab", "a?b?c?""#,
        r#""HeLLo", "%u+""#,
        r#""HeLLo", "%U+""#,
        r#""tab	here", "%s""#,
        "\"x\\vy\", \"%s\"",
        r#""a.b,c", "%p+""#,
        r#""a1 b2", "%w%d""#,
        r#""ff0A", "%x+""#,
        r#""\1\2x", "%c+""#,
        r#""x1", "%D""#,
        r#""zebra", "%z""#,
        r#""a\0b", "%z""#,
        r#""a\0b", "\0b""#,
        r#""a\0b", "[\0]""#,
        r#"12345, "%d%d""#,
        r#""a1", 1"#,
        r#""caf\xc3\xa9 ok", "[\x80-\xff]+""#,
        r#""aaa", "a-$""#,
        r#""aaa", "(a*(.)%w(%s*))""#,
        // errors
        r#""abc", "[a""#,
        r#""abc", "[a%""#,
        r#""abc", "%""#,
        r#""abc", "(()""#,
        r#""abc", "%1""#,
        r#""abc", "(a)%2""#,
        r#""abc", "%0""#,
        r#""abc", "a)""#,
        r#""abc", "%b""#,
        r#""abc", "%bx""#,
        r#""abc", "%fx""#,
        r#""abc", string.rep("(", 40) .. "a" .. string.rep(")", 40)"#,
        r#""abc", string.rep("a?", 300)"#,
        r#""abc", "c", 1.5"#,
        r#"nil, "a""#,
        r#""abc", {}"#,
    ];
    for args in finds {
        cases.push(format!("return string.find({args})"));
        cases.push(format!("return string.match({args})"));
        cases.push(format!("local r = {{}} for a, b in string.gmatch({args}) do r[#r + 1] = {{ a, b }} end return r"));
    }
    let gsubs: &[&str] = &[
        r#""hello world", "o", "0""#,
        r#""hello world", "o", "0", 1"#,
        r#""hello world", "(o)", "[%1%0%%]""#,
        r#""hello world", "()o", "%1""#,
        r#""hello", "", "-""#,
        r#""hello", "x*", "-""#,
        r#""hello", "l*", "-""#,
        r#""hello", "^h", "H""#,
        r#""hello", "^l", "L""#,
        r#""abc", "%w", "%0%0""#,
        r#""abc", "%w", { a = "1", b = true, c = false }"#,
        r#""abc", "%w", { a = 1.5 }"#,
        r#""abc", "(%w)", function(c) if c == "b" then return nil end return c:upper() end"#,
        r#""abc", "()%w", function(p) return p * 10 end"#,
        r#""abc", "%w", 7"#,
        r#""abc", "x", "y""#,
        r#"123, "2", "x""#,
        r#"123, "x", "y""#,
        r#""abc", "b", "b", 0"#,
        r#""abc", "b", "b", -1"#,
        r#""a,b,,c", "([^,]*)", "<%1>""#,
        // errors
        r#""abc", "b", "%2""#,
        r#""abc", "(b)", "%2""#,
        r#""abc", "b", "%""#,
        r#""abc", "b", "%x""#,
        r#""abc", "b", { b = {} }"#,
        r#""abc", "b", function() return {} end"#,
        r#""abc", "b""#,
        r#""abc", "b", true"#,
        r#""abc", "(b", "x""#,
    ];
    for args in gsubs {
        cases.push(format!("return string.gsub({args})"));
    }
    cases.push(r#"return ("x=1, y=2"):gsub("(%w+)=(%w+)", "%2=%1")"#.to_owned());
    cases.push(r#"local s = "a b" return s:find("b"), s:match("(a) (b)")"#.to_owned());
    let cases: Vec<&str> = cases.iter().map(String::as_str).collect();
    assert_same_as_stock_lua(&cases);
}

#[test]
fn table_functions_behave_like_lua() {
    assert_same_as_stock_lua(&[
        "local t = { 1, 2 } table.insert(t, 3) return t",
        "local t = { 1, 2 } table.insert(t, 1, 0) return t",
        "local t = { 1, 2 } table.insert(t, 3, 9) return t",
        "local t = { 1, 2 } table.insert(t, 4, 9) return t",
        "local t = { 1, 2 } table.insert(t, 0, 9) return t",
        "local t = { 1, 2 } table.insert(t, 1.5, 9) return t",
        "local t = { 1, 2 } table.insert(t, 2.0, 9) return t",
        "local t = { 1, 2 } table.insert(t, 'x', 9) return t",
        "local t = { 1, 2 } table.insert(t) return t",
        "local t = { 1, 2 } table.insert(t, 1, 2, 3) return t",
        "table.insert(nil, 1)",
        "table.insert('s', 1)",
        "local t = { 1, 2, 3 } return table.remove(t), t",
        "local t = { 1, 2, 3 } return table.remove(t, 1), t",
        "local t = { 1, 2, 3 } return table.remove(t, 4), t",
        "local t = { 1, 2, 3 } return table.remove(t, 5), t",
        "local t = {} return table.remove(t), t",
        "local t = {} return table.remove(t, 0), t",
        "local t = { [0] = 'z' } return table.remove(t, 0), t",
        "return table.remove({ 1 }, 'x')",
        "return table.move({ 1, 2, 3 }, 1, 3, 2)",
        "return table.move({ 1, 2, 3 }, 2, 3, 1)",
        "return table.move({ 1, 2, 3 }, 1, 3, 1, {})",
        "return table.move({ 1, 2, 3 }, 1, 0, 1, { 9 })",
        "local a = { 1, 2, 3 } return table.move(a, 1, 3, 3, a)",
        "return table.move({}, -1, math.maxinteger, 1)",
        "return table.move({ 1 }, 1, 1, math.maxinteger)",
        "return table.move({ 1 }, 'a', 1, 1)",
        "return table.move({ 1 }, 1, 1, 1, 5)",
        "local t = setmetatable({}, { __index = function(_, k) return k * 2 end }) return table.move(t, 1, 3, 1, {})",
        "local t = {} for i = 1, 5000 do t[i] = (i * 7919) % 5003 end table.sort(t) return t[1], t[2500], t[5000]",
        "local t = { 3, 1, 2 } table.sort(t) return t",
        "local t = { 3, 1, 2 } table.sort(t, function(a, b) return a > b end) return t",
        "local t = {} for i = 1, 5000 do t[i] = i end t[2500] = 'x' table.sort(t)",
        "table.sort(nil)",
    ]);
}

#[test]
fn library_loops_are_bounded_by_the_time_budget() {
    for code in [
        r#"local s = string.rep("a", 5000) return { fairness_key = tostring(s:find(".-.-.-.-b")) }"#,
        r#"local s = string.rep("a", 5000) return { fairness_key = tostring(s:match("(a*)*b")) }"#,
        r#"local s = string.rep("a", 5000) for x in s:gmatch("a-a-a-a-b") do end"#,
        r#"local s = string.rep("a", 5000) return { fairness_key = s:gsub("a-a-a-a-b", "") }"#,
        r#"local s = string.rep("a", 2000000) s:find(string.rep("a", 1000000) .. "b", 1, true)"#,
        "local t = setmetatable({}, { __len = function() return 1e15 end }) table.insert(t, 1, 'x')",
        "local t = setmetatable({}, { __len = function() return 1e15 end }) table.remove(t, 1)",
        "table.move({}, 1, 1e15, 2)",
    ] {
        assert_timeout(&format!("function on_enqueue(msg) {code} end"));
    }
}

#[test]
fn long_sorts_are_bounded_by_the_time_budget() {
    // A million numbers, added 20,000 per call; Lua's C sort takes ~0.4 s
    // on them here. (A 50 ms budget leaves room for the table's growth.)
    let source = r#"
        t, n = {}, 0
        function on_enqueue(msg)
            if msg.headers.sort then table.sort(t) return end
            for i = 1, 20000 do n = n + 1 t[n] = (n * 7919) % 1000003 end
        end
    "#;
    let limits =
        ScriptLimits { timeout: Duration::from_millis(50), memory_bytes: 64 * 1024 * 1024, ..ScriptLimits::default() };
    let mut scripts = QueueScripts::compile(Some(source), None, limits).unwrap();
    let (fill, sort) = (headers(&[]), headers(&[("sort", "1")]));
    for _ in 0..50 {
        scripts
            .on_enqueue(&ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&fill), payload: b"x" }, &NoConfig)
            .unwrap();
    }
    let started = Instant::now();
    let result =
        scripts.on_enqueue(&ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&sort), payload: b"x" }, &NoConfig);
    assert!(matches!(result, Err(ScriptError::Timeout { .. })), "{result:?}");
    assert!(started.elapsed() < Duration::from_millis(200), "stopped only after {:?}", started.elapsed());
}

#[test]
fn gsub_results_count_against_the_memory_limit() {
    // 100 MB of result; stopped at 8 MiB (the time limit is out of the way).
    let source = r#"function on_enqueue(msg) local s = string.rep("a", 100000) s:gsub("", string.rep("b", 1000)) end"#;
    let h = headers(&[]);
    let msg = ScriptMessage { queue: "q", headers: ScriptHeaders::Map(&h), payload: b"x" };
    let limits = ScriptLimits { timeout: Duration::from_secs(5), ..ScriptLimits::default() };
    let result = test_on_enqueue(source, &msg, &NoConfig, limits);
    assert!(matches!(result, Err(ScriptError::Memory { .. })), "{result:?}");
}

mod random_patterns {
    use proptest::prelude::*;

    use super::*;

    /// Lua string literal for arbitrary bytes.
    fn literal(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("\\{b}")).collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]

        /// Random short patterns (mostly special characters) against random
        /// subjects: the budgeted functions answer exactly what Lua's own
        /// do, errors included, and never panic.
        #[test]
        fn match_stock_lua(
            pattern in proptest::collection::vec(proptest::sample::select(b"ab()%[]^$*+-?.1fb".to_vec()), 0..9),
            subject in proptest::collection::vec(proptest::sample::select(b"ab()[]-".to_vec()), 0..12),
            init in -3i64..5,
        ) {
            let (p, s) = (literal(&pattern), literal(&subject));
            assert_same_as_stock_lua(&[
                &format!(r#"return string.find("{s}", "{p}", {init})"#),
                &format!(r#"return string.match("{s}", "{p}", {init})"#),
                &format!(r#"local r = {{}} for a, b in string.gmatch("{s}", "{p}") do r[#r + 1] = {{ a, b }} end return r"#),
                &format!(r#"return string.gsub("{s}", "{p}", "<%0>")"#),
                &format!(r#"return string.gsub("{s}", "{p}", function(x) return x .. "!" end, 2)"#),
            ]);
        }
    }
}

mod json_documents {
    use mlua::{Lua, Value};
    use proptest::prelude::*;
    use serde_json::Value as Json;

    use super::super::json;

    /// A Lua value as comparable text (table entries sorted).
    fn lua_text(value: &Value) -> String {
        match value {
            Value::Nil => "nil".into(),
            Value::Boolean(b) => b.to_string(),
            Value::Integer(i) => format!("i{i}"),
            Value::Number(n) => format!("f{n:?}"),
            Value::String(s) => format!("s{:?}", s.as_bytes().to_vec()),
            Value::Table(t) => {
                let mut entries: Vec<String> = t
                    .pairs::<Value, Value>()
                    .map(|pair| {
                        let (k, v) = pair.unwrap();
                        format!("{}={}", lua_text(&k), lua_text(&v))
                    })
                    .collect();
                entries.sort();
                format!("{{{}}}", entries.join(","))
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// What `fila.json_decode` documents for a parsed document, in the
    /// form of `lua_text`: `null` is `nil`, integers that fit 64 bits are
    /// integers, arrays are sequences.
    fn json_text(json: &Json) -> String {
        match json {
            Json::Null => "nil".into(),
            Json::Bool(b) => b.to_string(),
            Json::Number(n) => match n.as_i64() {
                Some(i) => format!("i{i}"),
                None => format!("f{:?}", n.as_f64().unwrap()),
            },
            Json::String(s) => format!("s{:?}", s.as_bytes().to_vec()),
            Json::Array(items) => {
                let mut entries: Vec<String> = items
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(i, v)| format!("i{}={}", i + 1, json_text(v)))
                    .collect();
                entries.sort();
                format!("{{{}}}", entries.join(","))
            }
            Json::Object(fields) => {
                let mut entries: Vec<String> = fields
                    .iter()
                    .filter(|(_, v)| !v.is_null())
                    .map(|(k, v)| format!("s{:?}={}", k.as_bytes().to_vec(), json_text(v)))
                    .collect();
                entries.sort();
                format!("{{{}}}", entries.join(","))
            }
        }
    }

    /// Decodes `text` as `fila.json_decode` does and checks the result (or
    /// the error message) against `serde_json::Value`'s reading of it.
    fn check(text: &[u8]) {
        for limit in [0, 64 * 1024 * 1024] {
            let lua = Lua::new();
            lua.set_memory_limit(limit).unwrap();
            let decode = json::function(&lua).unwrap();
            // Called by pcall, a C function: the message has no position.
            let (ok, value): (bool, Value) = lua
                .load("local decode, text = ... return pcall(decode, text)")
                .call((decode, lua.create_string(text).unwrap()))
                .unwrap();
            match serde_json::from_slice::<Json>(text) {
                Ok(expected) => {
                    assert!(ok, "{:?}: {value:?}", String::from_utf8_lossy(text));
                    assert_eq!(lua_text(&value), json_text(&expected), "{:?}", String::from_utf8_lossy(text));
                }
                Err(e) => {
                    assert!(!ok, "{:?}", String::from_utf8_lossy(text));
                    let Value::String(message) = value else { panic!("{value:?}") };
                    assert_eq!(message.to_str().unwrap(), format!("fila.json_decode: invalid JSON: {e}"));
                }
            }
        }
    }

    #[test]
    fn edge_cases() {
        for text in [
            "null",
            "true",
            r#""""#,
            r#""a\"b\u00e9\ud83d\ude00""#,
            "0",
            "-0",
            "-0.0",
            "1e400",
            "-1e400",
            "1.5e300",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "-9223372036854775808",
            "-9223372036854775809",
            "[]",
            "{}",
            "[null]",
            "[1,null,3,null]",
            r#"{"a":1,"a":2}"#,
            r#"{"a":1,"a":null}"#,
            r#"{"a":null,"a":1}"#,
            r#"{"a\nb":{"c\u0041":[[],{}]}}"#,
            r#"{"1":1,"2":2}"#,
            " [1, 2] ",
            "[1] x",
            "[1,]",
            "{\"a\":}",
            "",
            "[",
            "{oops",
            "\"\\x\"",
            "\"\u{1}\"",
            "nul",
            "01",
        ] {
            check(text.as_bytes());
        }
        check(b"\"\xff\"");
        // Over 64 KiB: built with the memory limit checked per allocation.
        let big = format!("[{}0]", r#"{"a":[1,"x\n",null,{"b":2.5}]},"#.repeat(3000));
        assert!(big.len() > 64 * 1024);
        check(big.as_bytes());
        check(&big.as_bytes()[..big.len() - 1]);
        check(&[b'['; 127].into_iter().chain([b']'; 127]).collect::<Vec<u8>>());
        check(&[b'['; 129].into_iter().chain([b']'; 129]).collect::<Vec<u8>>());
    }

    fn json() -> impl Strategy<Value = Json> {
        let leaf = prop_oneof![
            Just(Json::Null),
            any::<bool>().prop_map(Json::Bool),
            any::<i64>().prop_map(Json::from),
            any::<u64>().prop_map(Json::from),
            any::<f64>().prop_filter("finite", |n| n.is_finite()).prop_map(Json::from),
            "\\PC{0,6}".prop_map(Json::String),
        ];
        leaf.prop_recursive(4, 40, 6, |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..6).prop_map(Json::Array),
                proptest::collection::vec(("[ab\"\\\\é\n]{0,3}", inner), 0..6)
                    .prop_map(|fields| Json::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        /// Random documents, and the same with one byte changed or cut off
        /// (mostly invalid): the same values or the same error as
        /// `serde_json::Value`.
        #[test]
        fn decode_like_serde_json(doc in json(), cut in any::<prop::sample::Index>(), byte in any::<u8>(), how in 0u8..3) {
            let mut text = serde_json::to_vec(&doc).unwrap();
            let at = cut.index(text.len());
            match how {
                0 => {}
                1 => text.truncate(at),
                _ => text[at] = byte,
            }
            check(&text);
        }
    }
}

mod returned_tables {
    use mlua::{Lua, Value};
    use proptest::prelude::*;

    use super::*;

    fn value() -> impl Strategy<Value = String> {
        let scalar = prop::sample::select(vec![
            "nil",
            "true",
            "''",
            "'k'",
            "'retry'",
            "'dlq'",
            "'\\255'",
            "string.rep('k', 256)",
            "string.rep('k', 257)",
            "-1",
            "0",
            "1",
            "5",
            "1000000",
            "1000001",
            "604800000",
            "604800001",
            "2.0",
            "2.5",
            "{}",
        ])
        .prop_map(str::to_owned);
        let list =
            proptest::collection::vec(scalar.clone(), 0..18).prop_map(|items| format!("{{ {} }}", items.join(", ")));
        let odd = prop::sample::select(vec![
            "{ [1] = 'a', [3] = 'c' }",
            "{ [2] = 'a' }",
            "{ x = 'a' }",
            "{ 'a', x = 'b' }",
            "{ [0] = 'a', 'b' }",
            "{ [1.5] = 'a' }",
            "setmetatable({}, { __index = function() return 'k' end })",
        ])
        .prop_map(str::to_owned);
        prop_oneof![4 => scalar, 2 => list, 1 => odd]
    }

    fn table(names: &'static [&'static str]) -> impl Strategy<Value = String> {
        proptest::collection::vec((prop::sample::select(names), value()), 0..6).prop_map(|fields| {
            let fields: Vec<String> = fields.into_iter().map(|(name, value)| format!("[{name}] = {value}")).collect();
            format!("{{ {} }}", fields.join(", "))
        })
    }

    fn eval(lua: &Lua, expression: &str) -> Value {
        lua.load(format!("return {expression}")).eval().unwrap()
    }

    /// The Lua stack's height in the VM (its current top).
    fn stack_top(lua: &Lua) -> i32 {
        lua.exec_raw_lua(|raw| unsafe { mlua::ffi::lua_gettop(raw.state()) })
    }

    /// Scripts whose `hook` returns the value of `expression`; that value,
    /// and the hook's VM (to check its stack around a call).
    fn returning_value(hook: ScriptHook, expression: &str) -> (QueueScripts, Lua, Value) {
        let source = format!("function {hook}() return result end");
        let scripts = match hook {
            ScriptHook::OnEnqueue => QueueScripts::compile(Some(&source), None, ScriptLimits::default()),
            ScriptHook::OnFailure => QueueScripts::compile(None, Some(&source), ScriptLimits::default()),
        }
        .unwrap();
        let lua = scripts.hook(hook).unwrap().vm.lua().clone();
        let value = eval(&lua, expression);
        lua.globals().set("result", value.clone()).unwrap();
        (scripts, lua, value)
    }

    const MESSAGE: ScriptMessage<'static> =
        ScriptMessage { queue: "q", headers: ScriptHeaders::Pairs(&[]), payload: b"" };

    fn field(table: &Value, name: &str) -> Value {
        match table {
            Value::Table(t) => t.raw_get(name).unwrap(),
            _ => Value::Nil,
        }
    }

    fn string(value: &Value) -> Option<String> {
        match value {
            Value::String(s) => Some(s.to_str().unwrap().to_owned()),
            _ => None,
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Whatever on_enqueue returns, the broker answers a decision or a
        /// BadReturn, leaves the Lua stack as it was, and a decision holds
        /// exactly the table's fields.
        #[test]
        fn returned_enqueue_tables_are_read_exactly(
            expression in prop_oneof![
                table(&["'fairness_key'", "'weight'", "'throttle_keys'", "'other'", "1"]),
                value(),
            ],
        ) {
            let (mut scripts, lua, returned) = returning_value(ScriptHook::OnEnqueue, &expression);
            let top = stack_top(&lua);
            let result = scripts.on_enqueue(&MESSAGE, &NoConfig);
            prop_assert_eq!(stack_top(&lua), top);
            match result {
                Ok(decision) => {
                    let valid_key = |k: &String| (1..=256).contains(&k.len());
                    prop_assert!(decision.fairness_key.iter().all(valid_key), "{}", expression);
                    prop_assert!(decision.weight.iter().all(|w| (1..=1_000_000).contains(w)), "{}", expression);
                    prop_assert!(
                        decision.throttle_keys.iter().all(|keys| keys.len() <= 16 && keys.iter().all(valid_key)),
                        "{}", expression
                    );
                    prop_assert_eq!(decision.fairness_key, string(&field(&returned, "fairness_key")), "{}", expression);
                    let weight = match field(&returned, "weight") {
                        Value::Integer(i) => Some(i as u32),
                        Value::Number(n) => Some(n as u32),
                        _ => None,
                    };
                    prop_assert_eq!(decision.weight, weight, "{}", expression);
                    let keys = match field(&returned, "throttle_keys") {
                        Value::Table(t) => Some(t.sequence_values::<Value>().map(|v| string(&v.unwrap()).unwrap()).collect()),
                        _ => None,
                    };
                    prop_assert_eq!(decision.throttle_keys, keys, "{}", expression);
                }
                Err(ScriptError::BadReturn { .. }) => {}
                Err(other) => prop_assert!(false, "{}: {:?}", expression, other),
            }
        }

        /// As above, for on_failure.
        #[test]
        fn returned_failure_tables_are_read_exactly(
            expression in prop_oneof![table(&["'action'", "'delay_ms'", "'other'", "1"]), value()],
        ) {
            let (mut scripts, lua, returned) = returning_value(ScriptHook::OnFailure, &expression);
            let top = stack_top(&lua);
            let result = scripts.on_failure(&MESSAGE, 1, "boom", &NoConfig);
            prop_assert_eq!(stack_top(&lua), top);
            match result {
                Ok(None) => prop_assert!(returned.is_nil(), "{}", expression),
                Ok(Some(FailureDecision::DeadLetter)) => {
                    prop_assert_eq!(string(&field(&returned, "action")), Some("dlq".to_owned()), "{}", expression);
                    prop_assert!(field(&returned, "delay_ms").is_nil(), "{}", expression);
                }
                Ok(Some(FailureDecision::Retry { delay })) => {
                    prop_assert_eq!(string(&field(&returned, "action")), Some("retry".to_owned()), "{}", expression);
                    let delay_ms = match field(&returned, "delay_ms") {
                        Value::Integer(i) => i as u128,
                        Value::Number(n) => n as u128,
                        other => return Err(TestCaseError::fail(format!("{expression}: delay_ms {other:?}"))),
                    };
                    prop_assert_eq!(delay.as_millis(), delay_ms, "{}", expression);
                }
                Err(ScriptError::BadReturn { .. }) => {}
                Err(other) => prop_assert!(false, "{}: {:?}", expression, other),
            }
        }
    }
}
