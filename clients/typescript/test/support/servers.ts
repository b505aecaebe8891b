/**
 * Real resolver processes for the tests: `controlplane-resolver dev` (two
 * throwaway PostgreSQL clusters with demo data) and `controlplane-resolver
 * serve` (against the dev databases, through a link the test can cut, or
 * against none so that it stays in start-up). Every process listens on loopback only and is stopped with
 * SIGINT (dev then removes its clusters); if the test process itself is
 * stopped, its exit handler still signals them.
 */

import { spawn } from "node:child_process";
import type { ChildProcess } from "node:child_process";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import net from "node:net";
import os from "node:os";
import path from "node:path";

/** clients/typescript (the compiled tests run from .test-build/support/). */
export const PACKAGE_ROOT = path.resolve(__dirname, "..", "..");
export const REPO_ROOT = path.resolve(PACKAGE_ROOT, "..", "..");
export const SERVICE = "controlplane.resolver.v1.ControlPlaneResolverService";

/** The server command, from the repository's .venv (RESOLVER_BIN overrides). */
export function serverBinary(): string {
  const bin =
    process.env.RESOLVER_BIN ?? path.join(REPO_ROOT, ".venv", "bin", "controlplane-resolver");
  if (!fs.existsSync(bin)) {
    throw new Error(
      `${bin} not found: these tests start a real resolver. Run \`make install\` at the ` +
        `repository root (${REPO_ROOT}) first; it creates .venv with the server.`,
    );
  }
  return bin;
}

/** A TCP port on 127.0.0.1 that nothing listens on right now. */
export async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

const running = new Set<ChildProcess>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  // Synchronous: signal whatever still runs so dev removes its clusters.
  process.on("exit", () => {
    for (const child of running) child.kill("SIGINT");
  });
  for (const signal of ["SIGINT", "SIGTERM"] as const) {
    process.once(signal, () => {
      for (const child of running) child.kill("SIGINT");
      process.exit(130);
    });
  }
}

/** Environment variables the resolver reads: none leak in from the caller's shell. */
function cleanEnv(extra: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {};
  for (const [key, value] of Object.entries(process.env)) {
    if (/^(RESOLVER_|CONTROL_PLANE_|RUN_OPS_|REALTIME_|WORKER_VERSION_)/.test(key)) continue;
    env[key] = value;
  }
  return { ...env, PYTHONUNBUFFERED: "1", ...extra };
}

export class ServerProcess {
  stdout = "";
  stderr = "";
  exitCode: number | null | undefined = undefined;
  readonly exited: Promise<void>;
  readonly #child: ChildProcess;
  #listeners = new Set<() => void>();

  constructor(
    readonly name: string,
    args: string[],
    env: Record<string, string>,
  ) {
    installExitHook();
    this.#child = spawn(serverBinary(), args, {
      cwd: REPO_ROOT,
      env: cleanEnv(env),
      stdio: ["ignore", "pipe", "pipe"],
    });
    running.add(this.#child);
    this.#child.stdout!.setEncoding("utf8").on("data", (chunk: string) => {
      this.stdout += chunk;
      this.#notify();
    });
    this.#child.stderr!.setEncoding("utf8").on("data", (chunk: string) => {
      this.stderr += chunk;
      this.#notify();
    });
    this.exited = new Promise((resolve) => {
      this.#child.once("exit", (code, signal) => {
        this.exitCode = code ?? (signal ? -1 : null);
        running.delete(this.#child);
        this.#notify();
        resolve();
      });
      this.#child.once("error", (error) => {
        this.stderr += `\n${error}`;
        this.exitCode = -1;
        running.delete(this.#child);
        this.#notify();
        resolve();
      });
    });
  }

  #notify(): void {
    for (const listener of this.#listeners) listener();
  }

  /** The last lines of its output, for failure messages. */
  tail(lines = 30): string {
    const all = `${this.stdout}\n${this.stderr}`.trim().split("\n");
    return all.slice(-lines).join("\n");
  }

  /** Resolves once `ready()` is true of its output; rejects if it exits or
   * `timeoutMs` passes first. */
  async waitFor(ready: () => boolean, what: string, timeoutMs: number): Promise<void> {
    if (ready()) return;
    await new Promise<void>((resolve, reject) => {
      const done = (error?: Error): void => {
        clearTimeout(timer);
        this.#listeners.delete(check);
        if (error) reject(error);
        else resolve();
      };
      const check = (): void => {
        if (ready()) done();
        else if (this.exitCode !== undefined) {
          done(new Error(`${this.name} exited (${this.exitCode}) before ${what}:\n${this.tail()}`));
        }
      };
      const timer = setTimeout(
        () => done(new Error(`${this.name}: no ${what} within ${timeoutMs} ms:\n${this.tail()}`)),
        timeoutMs,
      );
      this.#listeners.add(check);
      check();
    });
  }

  /** SIGINT, then SIGKILL if it has not exited within `timeoutMs`. */
  async stop(timeoutMs = 20_000): Promise<void> {
    if (this.exitCode !== undefined) return;
    this.#child.kill("SIGINT");
    let timer: NodeJS.Timeout | undefined;
    const killed = new Promise<void>((resolve) => {
      timer = setTimeout(() => {
        this.#child.kill("SIGKILL");
        resolve();
      }, timeoutMs);
    });
    await Promise.race([this.exited, killed]);
    clearTimeout(timer);
    await this.exited;
  }
}

// ------------------------------------------------------------------ dev

export type Example = Record<string, unknown>;

export interface DevServer {
  process: ServerProcess;
  port: number;
  /** The request bodies dev prints, by method name (its grpcurl examples). */
  examples: Record<string, Example[]>;
  /** `host:port/dbname` of the dev databases, from its start-up log. */
  controlPlaneDb: string;
  runOpsDb: string;
}

/** The grpcurl examples dev prints on stdout, by method. */
export function parseExamples(stdout: string): Record<string, Example[]> {
  const examples: Record<string, Example[]> = {};
  const line = new RegExp(String.raw`-d '(\{.*\})' \S+ ${SERVICE.replaceAll(".", "\\.")}/(\w+)\s*$`);
  for (const text of stdout.split("\n")) {
    const match = line.exec(text);
    if (!match) continue;
    (examples[match[2]!] ??= []).push(JSON.parse(match[1]!) as Example);
  }
  return examples;
}

export async function startDev(timeoutMs = 90_000): Promise<DevServer> {
  const port = await freePort();
  const proc = new ServerProcess("controlplane-resolver dev", ["dev", "--addr", `127.0.0.1:${port}`], {});
  // dev prints its examples once it serves; the health-check line is the last.
  await proc.waitFor(
    () => /serving on/.test(proc.stdout) && /grpc\.health\.v1\.Health\/Check/.test(proc.stdout),
    "examples on stdout",
    timeoutMs,
  );
  const db = (role: string): string => {
    const match = new RegExp(String.raw`\b${role}: (127\.0\.0\.1:\d+/\w+)`).exec(proc.stderr);
    if (!match) throw new Error(`dev logged no ${role} database address:\n${proc.tail()}`);
    return match[1]!;
  };
  return {
    process: proc,
    port,
    examples: parseExamples(proc.stdout),
    controlPlaneDb: db("control-plane"),
    runOpsDb: db("run-ops"),
  };
}

// ---------------------------------------------------------------- serve

export interface ServeOptions {
  /** `host:port/dbname` of the control-plane database. */
  controlPlaneDb: string;
  env?: Record<string, string>;
  /** Wait for this in the log before resolving (default: SERVING). */
  readyPattern?: RegExp;
  timeoutMs?: number;
}

export interface Served {
  process: ServerProcess;
  port: number;
  metricsPort: number;
}

/** `controlplane-resolver serve` on loopback, split off, with metrics. */
export async function startServe(name: string, options: ServeOptions): Promise<Served> {
  const [port, metricsPort] = [await freePort(), await freePort()];
  const proc = new ServerProcess(name, ["serve"], {
    CONTROL_PLANE_DATABASE_URL: `postgresql://postgres@${options.controlPlaneDb}`,
    RESOLVER_ADDR: `127.0.0.1:${port}`,
    RESOLVER_METRICS_ADDR: `127.0.0.1:${metricsPort}`,
    RESOLVER_SHUTDOWN_GRACE_MS: "500",
    ...options.env,
  });
  await proc.waitFor(
    () => (options.readyPattern ?? new RegExp(`serving ${SERVICE.replaceAll(".", "\\.")} on`)).test(proc.stderr),
    "readiness",
    options.timeoutMs ?? 60_000,
  );
  return { process: proc, port, metricsPort };
}

// ------------------------------------------------------------ faults

/** A TCP forwarder on a port of its own to `target` (`host:port`): a
 * server's way to a database that the test can take away, or a client's way
 * to a server whose process the test can kill. */
export interface Link {
  port: number;
  /** Connections accepted so far (refused ones included), and refused. */
  readonly accepted: number;
  readonly refused: number;
  /** Close the port and every connection through it: from now on the
   * database is unreachable (connections refused), as if it had died. */
  cut(): Promise<void>;
  /** What the death of a server process (SIGKILL) does while another
   * listens on the same address (`serve --processes`): every connection
   * reset, and the next `refuseNext` reset once accepted (the kernel had
   * queued them on the dead process's listening socket). */
  kill(refuseNext?: number): void;
}

export async function startLink(target: string): Promise<Link> {
  const [host, port] = [target.slice(0, target.lastIndexOf(":")), Number(target.slice(target.lastIndexOf(":") + 1))];
  const open = new Set<net.Socket>();
  const inbounds = new Set<net.Socket>();
  const counts = { accepted: 0, refused: 0, refuse: 0 };
  const server = net.createServer((inbound) => {
    counts.accepted += 1;
    if (counts.refuse > 0) {
      counts.refuse -= 1;
      counts.refused += 1;
      inbound.on("error", () => {});
      inbound.resetAndDestroy();
      return;
    }
    const outbound = net.connect(port, host);
    const drop = (): void => {
      inbound.destroy();
      outbound.destroy();
      open.delete(inbound);
      open.delete(outbound);
      inbounds.delete(inbound);
    };
    for (const socket of [inbound, outbound]) {
      open.add(socket);
      socket.on("error", drop).on("close", drop);
    }
    inbounds.add(inbound);
    inbound.pipe(outbound);
    outbound.pipe(inbound);
  });
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(0, "127.0.0.1", () => resolve());
  });
  return {
    port: (server.address() as net.AddressInfo).port,
    get accepted() {
      return counts.accepted;
    },
    get refused() {
      return counts.refused;
    },
    cut: () =>
      new Promise<void>((resolve) => {
        server.close(() => resolve());
        for (const socket of open) socket.destroy();
      }),
    kill: (refuseNext = 1) => {
      counts.refuse += refuseNext;
      for (const inbound of [...inbounds]) inbound.resetAndDestroy();
    },
  };
}

/** A gauge or counter of /metrics with exactly these labels (0 when absent). */
export async function metricValue(metricsPort: number, name: string, labels: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
    signal: AbortSignal.timeout(5000),
  });
  const wanted = `${name}{${labels}} `;
  for (const line of (await response.text()).split("\n")) {
    if (line.startsWith(wanted)) return Number(line.slice(wanted.length));
  }
  return 0;
}

/** `grpc_server_handled_total` of one method and code, from /metrics. */
export async function handledCount(metricsPort: number, method: string, code: string): Promise<number> {
  const response = await fetch(`http://127.0.0.1:${metricsPort}/metrics`, {
    signal: AbortSignal.timeout(5000),
  });
  const text = await response.text();
  let total = 0;
  for (const line of text.split("\n")) {
    if (!line.startsWith("grpc_server_handled_total{")) continue;
    if (!line.includes(`grpc_method="${method}"`) || !line.includes(`grpc_code="${code}"`)) continue;
    total += Number(line.slice(line.lastIndexOf(" ") + 1));
  }
  return total;
}

// ------------------------------------------------------------ credentials

export interface Pki {
  dir: string;
  ca: Buffer;
  serverCert: string;
  serverKey: string;
  clientCert: Buffer;
  clientKey: Buffer;
}

/** A throwaway CA, a server certificate for 127.0.0.1/localhost and a client
 * certificate, made with the openssl command. */
export function makePki(): Pki {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "resolver-ts-pki-"));
  const openssl = (...args: string[]): void => {
    try {
      execFileSync("openssl", args, { cwd: dir, stdio: ["ignore", "ignore", "pipe"] });
    } catch (error) {
      throw new Error(`openssl ${args[0]} failed (the TLS tests need the openssl command): ${error}`);
    }
  };
  const key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
  openssl("req", "-x509", ...key, "-keyout", "ca.key", "-out", "ca.pem", "-days", "1", "-subj", "/CN=resolver-test-ca");
  const leaf = (name: string, usage: string, san: string): void => {
    fs.writeFileSync(
      path.join(dir, `${name}.ext`),
      `basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=${usage}\n${san}`,
    );
    openssl("req", ...key, "-keyout", `${name}.key`, "-out", `${name}.csr`, "-subj", `/CN=${name}`);
    openssl(
      "x509", "-req", "-in", `${name}.csr`, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
      "-days", "1", "-out", `${name}.pem`, "-extfile", `${name}.ext`,
    );
  };
  leaf("server", "serverAuth", "subjectAltName=IP:127.0.0.1,DNS:localhost\n");
  leaf("client", "clientAuth", "");
  const read = (name: string): Buffer => fs.readFileSync(path.join(dir, name));
  return {
    dir,
    ca: read("ca.pem"),
    serverCert: path.join(dir, "server.pem"),
    serverKey: path.join(dir, "server.key"),
    clientCert: read("client.pem"),
    clientKey: read("client.key"),
  };
}

/** A TCP listener on loopback that accepts connections and never answers:
 * a peer that makes every call wait for its deadline. */
export async function silentListener(): Promise<{ port: number; close: () => Promise<void> }> {
  const sockets = new Set<net.Socket>();
  const server = net.createServer((socket) => {
    sockets.add(socket);
    socket.on("close", () => sockets.delete(socket));
    socket.on("error", () => undefined);
  });
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  const { port } = server.address() as net.AddressInfo;
  return {
    port,
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}
