//! Which frame of a code path is the application's own: the one a leak is fixed in.
//!
//! A user stack taken in an event loop, a thread pool or an interpreter is mostly the runtime's
//! (libuv's poll loop, the JVM's interpreter and `java.*` classes, CPython's C functions) and
//! the C library's. The innermost frame that is neither names the handler: it becomes the
//! headline of a `leaks` group ("leaked by `handleConnection` (server.js:12)"), and groups are
//! made by it, so a thousand sockets from one handler make one group whatever the event loop
//! did around it.
//!
//! What counts as the application's (each rule has a unit test below):
//! - a native frame with a symbol, in an executable that is not a language runtime (`node`,
//!   `java`, `python3.11`, ...), and not a C library wrapper of a syscall or libc start-up
//!   code linked into it;
//! - a JIT or interpreted frame from the runtime's perf map (`/tmp/perf-PID.map`): a V8
//!   JavaScript function whose script is not Node's own (`node:*`); a JVM method whose class is
//!   not the platform's or a framework internal (`java.*`, `javax.*`, `jdk.*`, `sun.*`,
//!   `com.sun.*`, `io.netty.*`, `kotlin.*`, `scala.*`, generated lambda classes); a Python
//!   3.12+ function (`py::`) whose file is not in the standard library or `site-packages`.
//!
//! Not the application's: shared libraries (`*.so*`: libc, libuv, libjvm, libnio, CPython
//! extension modules), language runtimes' executables, the kernel's pseudo-mappings (`[vdso]`,
//! `[heap]`), V8 builtins, stubs and bytecode handlers, the JVM's `Interpreter` and stubs, and
//! any address that could not be symbolized.
//!
//! Pure functions over what the symbolizer found: no I/O (see `host::stacks`).
use serde::{Deserialize, Serialize};

/// Where the symbolizer found a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin<'a> {
    /// A file-backed mapping: the path (or base name) of the executable or library.
    Module(&'a str),
    /// The runtime's perf map (JIT-compiled or interpreted code in anonymous memory).
    PerfMap,
    /// Nothing: an unsymbolized address, or the process is gone.
    Unknown,
}

/// One frame as the symbolizer found it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The symbol (empty when there is none).
    pub name: &'a str,
    /// Source file and line, from debug info.
    pub file: Option<&'a str>,
    pub line: Option<u32>,
    pub origin: Origin<'a>,
}

/// The application frame a code path is known by.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Headline {
    /// The function or method (`handleConnectionForgetsEnd`, `LeakyPool.handle`).
    pub function: String,
    /// `file:line` (base name) when known, else `None`.
    pub location: Option<String>,
}

impl std::fmt::Display for Headline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}`", self.function)?;
        if let Some(l) = &self.location {
            write!(f, " ({l})")?;
        }
        Ok(())
    }
}

/// A language runtime recognised among a code path's frames: says what it needs for its own
/// frames to be named.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Runtime {
    Node,
    Jvm,
    Python,
    /// Another interpreter (Ruby, Perl, PHP, ...).
    Other,
}

/// What one frame is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Class {
    Application(Headline),
    /// A runtime's or library's frame; the runtime, when the frame tells.
    Runtime(Option<Runtime>),
}

/// Classifies one frame (see the module documentation for the rules).
pub fn classify(f: &Frame<'_>) -> Class {
    match f.origin {
        Origin::Unknown => Class::Runtime(None),
        Origin::PerfMap => perf_map_frame(f.name),
        Origin::Module(path) => native_frame(f, base_name(path)),
    }
}

/// The innermost application frame of `frames` (innermost first), and the runtimes seen.
pub fn headline<'a>(
    frames: impl IntoIterator<Item = Frame<'a>>,
) -> (Option<Headline>, Vec<Runtime>) {
    let mut runtimes = Vec::new();
    for f in frames {
        match classify(&f) {
            Class::Application(h) => return (Some(h), runtimes),
            Class::Runtime(Some(r)) if !runtimes.contains(&r) => runtimes.push(r),
            Class::Runtime(_) => {}
        }
    }
    (None, runtimes)
}

/// Why no application frame was found, and what would show one, from the runtimes seen.
pub fn why_not_shown(runtimes: &[Runtime]) -> String {
    let hint = match runtimes.first() {
        Some(Runtime::Node) => {
            "Node: run it with --perf-basic-prof --interpreted-frames-native-stack so that \
             JavaScript functions are named"
        }
        Some(Runtime::Jvm) => {
            "JVM: run it with -XX:+PreserveFramePointer and write a perf map (jcmd PID \
             Compiler.perfmap); interpreted methods show only as Interpreter"
        }
        Some(Runtime::Python) => {
            "Python: its functions can be named from Python 3.12 on, run with -X perf \
             (PYTHONPERFSUPPORT=1); older interpreters' frames cannot be shown"
        }
        Some(Runtime::Other) => "this interpreter writes no perf map: its frames cannot be shown",
        None => {
            "only library and runtime frames were found (a stripped binary, code built \
             without frame pointers, or a JIT without a perf map)"
        }
    };
    format!("no application frame in this code path; {hint}")
}

fn base_name(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// The runtime a module (base name) belongs to, if it is a runtime's executable or library:
/// what a process whose code path names none of its own frames runs on.
pub fn module_runtime(module: &str) -> Option<Runtime> {
    let m = module;
    if m == "node" || m == "nodejs" || m.starts_with("libnode.") || m.starts_with("libuv.") {
        Some(Runtime::Node)
    } else if m == "java"
        || ["libjvm.", "libjava.", "libnio.", "libnet.", "libjli."]
            .iter()
            .any(|p| m.starts_with(p))
    {
        Some(Runtime::Jvm)
    } else if m.starts_with("python") || m.starts_with("libpython") || m.contains(".cpython-") {
        Some(Runtime::Python)
    } else if ["ruby", "perl", "php", "libruby", "libperl", "libphp"]
        .iter()
        .any(|p| m.starts_with(p))
    {
        Some(Runtime::Other)
    } else {
        None
    }
}

fn is_shared_object(module: &str) -> bool {
    module.ends_with(".so") || module.contains(".so.")
}

/// C library code linked into an executable (static builds): syscall wrappers and start-up.
fn is_libc_symbol(name: &str) -> bool {
    const WRAPPERS: &[&str] = &[
        "accept", "accept4", "connect", "send", "sendto", "sendmsg", "recv", "recvfrom", "recvmsg",
        "read", "write", "readv", "writev", "close", "syscall", "_start",
    ];
    name.starts_with("__") || WRAPPERS.contains(&name)
}

fn native_frame(f: &Frame<'_>, module: &str) -> Class {
    if module.starts_with('[') || module.is_empty() {
        // [vdso], [heap], [stack], [anon:...]: no code of the application's own.
        return Class::Runtime(None);
    }
    if let Some(r) = module_runtime(module) {
        return Class::Runtime(Some(r));
    }
    if is_shared_object(module) || f.name.is_empty() || is_libc_symbol(f.name) {
        return Class::Runtime(None);
    }
    let location = match (f.file, f.line) {
        (Some(file), Some(line)) => Some(format!("{}:{line}", base_name(file))),
        _ => Some(module.to_string()),
    };
    Class::Application(Headline {
        function: f.name.to_string(),
        location,
    })
}

fn perf_map_frame(name: &str) -> Class {
    if let Some(rest) = ["JS:", "LazyCompile:", "Function:", "Script:"]
        .iter()
        .find_map(|p| name.strip_prefix(p))
    {
        return v8_function(rest);
    }
    if [
        "Builtin:",
        "BytecodeHandler:",
        "Stub:",
        "Handler:",
        "RegExp:",
        "Builtins_",
    ]
    .iter()
    .any(|p| name.starts_with(p))
    {
        return Class::Runtime(Some(Runtime::Node));
    }
    if let Some(rest) = name.strip_prefix("py::") {
        return python_function(rest);
    }
    java_method(name)
}

/// A V8 function entry after its prefix: `[~*^+]name file:line:col` (the marker says how it
/// was compiled; `name` may be empty for an anonymous function).
fn v8_function(rest: &str) -> Class {
    let rest = rest.trim_start_matches(['~', '*', '^', '+']);
    let (function, script) = match rest.rsplit_once(' ') {
        Some((f, s)) => (f.trim(), s),
        None => ("", rest),
    };
    if script.is_empty() || script.starts_with("node:") || !script.contains(':') {
        return Class::Runtime(Some(Runtime::Node));
    }
    // `path:line:col` -> `file:line`.
    let mut parts = script.rsplitn(3, ':');
    let (_col, line, path) = (parts.next(), parts.next(), parts.next());
    let location = match (path, line) {
        (Some(p), Some(l)) => format!("{}:{l}", base_name(p)),
        _ => base_name(script).to_string(),
    };
    Class::Application(Headline {
        function: if function.is_empty() {
            "(anonymous)".to_string()
        } else {
            function.to_string()
        },
        location: Some(location),
    })
}

/// A Python 3.12+ perf trampoline: `qualname:path/to/file.py`.
fn python_function(rest: &str) -> Class {
    let Some((function, path)) = rest.split_once(':') else {
        return Class::Runtime(Some(Runtime::Python));
    };
    let in_library = path.contains("/lib/python3")
        || path.contains("site-packages")
        || path.contains("dist-packages")
        || path.starts_with('<');
    if in_library {
        return Class::Runtime(Some(Runtime::Python));
    }
    Class::Application(Headline {
        function: function.to_string(),
        location: Some(base_name(path).to_string()),
    })
}

/// Packages whose methods are the platform's or a framework's, not the application's.
const JVM_INTERNAL: &[&str] = &[
    "java.",
    "javax.",
    "jdk.",
    "sun.",
    "com.sun.",
    "io.netty.",
    "kotlin.",
    "kotlinx.",
    "scala.",
];

/// A JVM perf map entry: `ReturnType pkg.Class.method(ArgTypes)` for a compiled method;
/// anything else (`Interpreter`, `StubRoutines (1)`, adapters) is the JVM's own.
fn java_method(name: &str) -> Class {
    let Some(open) = name.find('(') else {
        return Class::Runtime(Some(Runtime::Jvm));
    };
    let qualified = name[..open].rsplit(' ').next().unwrap_or("");
    let Some((class, method)) = qualified.rsplit_once('.') else {
        return Class::Runtime(Some(Runtime::Jvm));
    };
    if class.is_empty()
        || method.is_empty()
        || JVM_INTERNAL.iter().any(|p| class.starts_with(p))
        || class.contains("$$Lambda")
    {
        return Class::Runtime(Some(Runtime::Jvm));
    }
    let simple = class.rsplit('.').next().unwrap_or(class);
    Class::Application(Headline {
        function: format!("{simple}.{method}"),
        // A perf map gives no source line.
        location: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn native<'a>(name: &'a str, module: &'a str) -> Frame<'a> {
        Frame {
            name,
            file: None,
            line: None,
            origin: Origin::Module(module),
        }
    }

    fn jit(name: &str) -> Frame<'_> {
        Frame {
            name,
            file: None,
            line: None,
            origin: Origin::PerfMap,
        }
    }

    fn app(function: &str, location: Option<&str>) -> Class {
        Class::Application(Headline {
            function: function.into(),
            location: location.map(String::from),
        })
    }

    #[test]
    fn a_c_servers_own_function_is_the_application_with_its_source_line() {
        let f = Frame {
            name: "handle_conn_forgets_close",
            file: Some("/src/tests/src/leaky_server.c"),
            line: Some(88),
            origin: Origin::Module("/usr/bin/leaky_server"),
        };
        assert_eq!(
            classify(&f),
            app("handle_conn_forgets_close", Some("leaky_server.c:88"))
        );
        // Without debug info, the module says where.
        assert_eq!(
            classify(&native("handle", "/opt/shop/bin/shopd")),
            app("handle", Some("shopd"))
        );
    }

    #[test]
    fn libraries_runtimes_and_pseudo_mappings_are_not_the_application() {
        for (name, module) in [
            ("accept4", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            ("uv__server_io", "/usr/bin/node"),
            ("node::StreamBase::WriteString", "/usr/bin/node"),
            ("uv__io_poll", "/usr/lib/x86_64-linux-gnu/libuv.so.1"),
            (
                "JavaCalls::call_helper",
                "/usr/lib/jvm/java-17/lib/server/libjvm.so",
            ),
            (
                "Java_sun_nio_ch_SocketDispatcher_write0",
                "/usr/lib/jvm/x/lib/libnio.so",
            ),
            (
                "sock_accept",
                "/usr/lib/python3.11/lib-dynload/_socket.cpython-311-x86_64-linux-gnu.so",
            ),
            ("_PyEval_EvalFrameDefault", "/usr/bin/python3.11"),
            ("SSL_write", "/usr/lib/x86_64-linux-gnu/libssl.so.3"),
            ("", "[heap]"),
            ("__vdso_clock_gettime", "[vdso]"),
            // Static libc code inside an application's executable.
            ("accept4", "/usr/bin/static_server"),
            ("__libc_start_main", "/usr/bin/static_server"),
            // An address without a symbol names nothing.
            ("", "/usr/bin/stripped_server"),
        ] {
            assert!(
                matches!(classify(&native(name, module)), Class::Runtime(_)),
                "{name} in {module}"
            );
        }
        let gone = Frame {
            name: "",
            file: None,
            line: None,
            origin: Origin::Unknown,
        };
        assert_eq!(classify(&gone), Class::Runtime(None));
    }

    #[test]
    fn node_functions_from_the_perf_map_are_the_application_unless_nodes_own() {
        assert_eq!(
            classify(&jit(
                "JS:~handleConnectionForgetsEnd /srv/app/server.js:12:36"
            )),
            app("handleConnectionForgetsEnd", Some("server.js:12"))
        );
        // Optimized (`*`), and the older `LazyCompile:` prefix.
        assert_eq!(
            classify(&jit("LazyCompile:*onRequest /srv/app/lib/http.js:40:9")),
            app("onRequest", Some("http.js:40"))
        );
        // An anonymous callback.
        assert_eq!(
            classify(&jit("JS:~ /srv/app/server.js:7:30")),
            app("(anonymous)", Some("server.js:7"))
        );
        for runtime in [
            "JS:~writeGeneric node:internal/stream_base_commons:148:22",
            "JS:~onconnection node:net:2168:22",
            "Builtin:InterpreterEntryTrampoline",
            "BytecodeHandler:Star0",
            "Builtins_JSEntry",
        ] {
            assert_eq!(
                classify(&jit(runtime)),
                Class::Runtime(Some(Runtime::Node)),
                "{runtime}"
            );
        }
    }

    #[test]
    fn jvm_methods_are_the_application_unless_the_platforms_or_a_frameworks() {
        assert_eq!(
            classify(&jit("void LeakyPool.handleForgetsClose(java.net.Socket)")),
            app("LeakyPool.handleForgetsClose", None)
        );
        assert_eq!(
            classify(&jit(
                "int com.shop.orders.OrderClient.fetch(java.lang.String, int)"
            )),
            app("OrderClient.fetch", None)
        );
        for runtime in [
            "Interpreter",
            "StubRoutines (1)",
            "handle_exception Runtime1 stub",
            "void java.util.concurrent.ThreadPoolExecutor.runWorker(java.util.concurrent.ThreadPoolExecutor$Worker)",
            "int sun.nio.ch.NioSocketImpl.implWrite(byte[], int, int)",
            "void io.netty.channel.nio.NioEventLoop.run()",
            "void LeakyPool$$Lambda$14/0x0000000800c0b448.run()",
        ] {
            assert_eq!(
                classify(&jit(runtime)),
                Class::Runtime(Some(Runtime::Jvm)),
                "{runtime}"
            );
        }
    }

    #[test]
    fn python_312_functions_are_the_application_unless_from_the_library() {
        assert_eq!(
            classify(&jit("py::handle_client:/srv/app/server.py")),
            app("handle_client", Some("server.py"))
        );
        for runtime in [
            "py::create_connection:/usr/lib/python3.12/socket.py",
            "py::request:/srv/venv/lib/python3.12/site-packages/urllib3/pool.py",
            "py::<module>:<frozen runpy>",
        ] {
            assert_eq!(
                classify(&jit(runtime)),
                Class::Runtime(Some(Runtime::Python)),
                "{runtime}"
            );
        }
    }

    #[test]
    fn the_headline_is_the_innermost_application_frame_and_runtimes_are_noted() {
        let frames = [
            native("__GI___write", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            native("node::LibuvStreamWrap::DoTryWrite", "/usr/bin/node"),
            jit("JS:~writeGeneric node:internal/stream_base_commons:148:22"),
            jit("JS:~handleConnectionForgetsEnd /srv/server.js:2:36"),
            jit("JS:~onconnection node:net:2168:22"),
            jit("JS:~main /srv/server.js:40:1"),
        ];
        let (h, runtimes) = headline(frames);
        assert_eq!(
            h.map(|h| h.to_string()).as_deref(),
            Some("`handleConnectionForgetsEnd` (server.js:2)")
        );
        assert_eq!(runtimes, vec![Runtime::Node]);

        // Python 3.11: nothing of the application's; the message says what would show it.
        let (h, runtimes) = headline([
            native("accept4", "/usr/lib/x86_64-linux-gnu/libc.so.6"),
            native("sock_accept", "/x/_socket.cpython-311-x86_64-linux-gnu.so"),
            native("", "[heap]"),
        ]);
        assert_eq!(h, None);
        let why = why_not_shown(&runtimes);
        assert!(
            why.contains("Python 3.12") && why.contains("-X perf"),
            "{why}"
        );
        assert!(why_not_shown(&[]).contains("stripped binary"));
        assert!(why_not_shown(&[Runtime::Jvm]).contains("Compiler.perfmap"));
        assert!(why_not_shown(&[Runtime::Node]).contains("--perf-basic-prof"));
    }
}
