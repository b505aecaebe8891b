/**
 * The client against real resolver processes (test/support/servers.ts):
 *
 * - `dev`: every RPC once, with a check of what it answered, NOT_FOUND →
 *   null, errors with their ErrorInfo reason, deadlines and cancellation;
 * - `serve` with bearer tokens and mutual TLS, against dev's databases;
 * - `serve` whose database went away (its link to dev's database cut),
 *   which answers UNAVAILABLE / DATABASE_UNAVAILABLE with a retry delay: the
 *   channel's retries and their pushback, the retry throttle and round
 *   robin, counted in the server's own metrics;
 * - `serve` that never becomes ready (its database does not exist), whose
 *   port is not bound: round robin leaves it out, and no call fails.
 */

import assert from "node:assert/strict";
import crypto from "node:crypto";
import fs from "node:fs";
import path from "node:path";
import { after, before, describe, test } from "node:test";

import { Channel, credentials } from "@grpc/grpc-js";

import { Code, ResolverClient, ResolverError, pb, serviceConfig } from "@controlplane-resolver/client";

import {
  handledCount,
  makePki,
  metricValue,
  serverBinary,
  silentListener,
  startDev,
  startLink,
  startServe,
} from "./support/servers.js";
import type { DevServer, Example, Pki, Served } from "./support/servers.js";

const ABSENT_CUID = `c${"0".repeat(24)}`;
const T = { timeout: 20_000 };

/** Polls `count` until it reaches `atLeast` (metrics are scraped, so give
 * the server a moment), then returns its value. */
async function settled(count: () => Promise<number>, atLeast: number): Promise<number> {
  const deadline = Date.now() + 3000;
  let value = await count();
  while (value < atLeast && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 50));
    value = await count();
  }
  return value;
}

/** Resolves once `condition()` holds; fails the test if 10 s pass first. */
async function until(condition: () => boolean, what: string): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!condition()) {
    if (Date.now() > deadline) assert.fail(`${what}: not within 10 s`);
    await new Promise((resolve) => setTimeout(resolve, 10)); // polling, not synchronisation
  }
}

/** Rejects unless `promise` rejects with a ResolverError; returns it. */
async function failure(promise: Promise<unknown>): Promise<ResolverError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ResolverError, `not a ResolverError: ${error}`);
    return error;
  }
  assert.fail("the call succeeded");
}

function str(example: Example | undefined, key: string): string {
  const value = example?.[key];
  assert.equal(typeof value, "string", `dev printed no ${key}: ${JSON.stringify(example)}`);
  return value as string;
}

let dev: DevServer;
let secure: Served;
let starting: Served;
let outage: Served;
let pki: Pki;
let tokensFile: string;
const ENGINE_TOKEN = crypto.randomBytes(18).toString("base64url");
const LIMITED_TOKEN = crypto.randomBytes(18).toString("base64url");

// Ids from dev's printed examples.
let ids: {
  org: string;
  prodEnv: string;
  stagingEnv: string;
  devEnv: string;
  branchEnv: string;
  task: string;
  worker: string;
  newRunFriendly: string;
  newRun: string;
  legacyRun: string;
  legacyRunFriendly: string;
  legacyInRunOpsFriendly: string;
  waitpoint: string;
};

before(
  async () => {
    serverBinary(); // a clear message when .venv is missing
    // dev (clusters, demo data) and the server that never gets ready start
    // together. That one's database is on port 1, where nothing listens: it
    // waits for it (up to RESOLVER_STARTUP_TIMEOUT_MS) with its port unbound.
    const neverDb = "127.0.0.1:1/platform";
    [dev, starting] = await Promise.all([
      startDev(),
      startServe("serve (never ready)", {
        controlPlaneDb: neverDb,
        env: { RESOLVER_STARTUP_TIMEOUT_MS: "300000", RESOLVER_LISTEN_ENABLED: "0" },
        readyPattern: /metrics on http:/,
      }),
    ]);
    // A server over dev's control-plane database, through a link that is
    // then cut: the database is gone. Once its circuit is open, every call
    // that needs the database is answered UNAVAILABLE at once, with a retry
    // delay of the probe interval (1 s).
    const link = await startLink(dev.controlPlaneDb.split("/")[0]!);
    outage = await startServe("serve (database gone)", {
      controlPlaneDb: `127.0.0.1:${link.port}/${dev.controlPlaneDb.split("/")[1]}`,
      env: { RESOLVER_LISTEN_ENABLED: "0", RESOLVER_DB_TIMEOUT_MS: "1000" },
    });
    await link.cut();
    const circuitOpen = async (): Promise<boolean> =>
      (await metricValue(outage.metricsPort, "resolver_db_circuit_open", 'database="control-plane"')) === 1;
    // Its own target string: grpc-js keeps one retry throttle per target.
    const poke = new ResolverClient(`ipv4:127.0.0.1:${outage.port}`);
    try {
      const deadline = Date.now() + 30_000;
      while (!(await circuitOpen())) {
        assert.ok(Date.now() < deadline, "the circuit did not open within 30 s");
        await poke.resolveEnv(ABSENT_CUID, { timeoutMs: 3000 }).catch(() => null);
      }
    } finally {
      poke.close();
    }
    const ex = dev.examples;
    const readRuns = ex.ReadRun ?? [];
    const prodEnv = str(ex.ResolveEnv?.[0], "environmentId");
    const batchRuns = (ex.BatchReadRuns?.[0]?.runIds ?? []) as string[];
    ids = {
      org: str(ex.ResolveMintKind?.[0], "organizationId"),
      prodEnv,
      stagingEnv: str(ex.AssertEnvExists?.[0], "environmentId"),
      devEnv: str(
        ex.ResolveWorkerVersion?.find((body) => body.environmentId !== prodEnv),
        "environmentId",
      ),
      branchEnv: str(ex.ResolveAuthenticatedEnv?.[0], "environmentId"),
      task: str(ex.ResolveRunLockedWorker?.[0], "lockedById"),
      worker: str(ex.ResolveRunLockedWorker?.[0], "lockedToVersionId"),
      newRunFriendly: str(
        readRuns.find((body) => body.includeEnvironment),
        "runId",
      ),
      newRun: batchRuns[0] ?? "",
      legacyRun: str(ex.MintId?.[0], "parentId"),
      legacyRunFriendly: batchRuns[1] ?? "",
      legacyInRunOpsFriendly: str(ex.ClassifyRunId?.[0], "id"),
      waitpoint: str(ex.SelectStoreForWaitpoint?.[0], "waitpointId"),
    };
    // Tokens and mutual TLS, against dev's control-plane database.
    pki = makePki();
    tokensFile = path.join(pki.dir, "tokens");
    fs.writeFileSync(
      tokensFile,
      `engine ${ENGINE_TOKEN} *\nlimited ${LIMITED_TOKEN} ClassifyRunId\n`,
    );
    secure = await startServe("serve (tokens, mutual TLS)", {
      controlPlaneDb: dev.controlPlaneDb,
      env: {
        RESOLVER_AUTH_TOKENS_FILE: tokensFile,
        RESOLVER_TLS_CERT: pki.serverCert,
        RESOLVER_TLS_KEY: pki.serverKey,
        RESOLVER_TLS_CLIENT_CA: path.join(pki.dir, "ca.pem"),
      },
    });
  },
  { timeout: 120_000 },
);

after(
  async () => {
    await Promise.allSettled([
      dev?.process.stop(),
      secure?.process.stop(),
      starting?.process.stop(),
      outage?.process.stop(),
    ]);
    if (pki) fs.rmSync(pki.dir, { recursive: true, force: true });
    if (dev) {
      assert.match(dev.process.stdout, /removed the throwaway clusters/, dev.process.tail());
    }
  },
  { timeout: 60_000 },
);

describe("every RPC against `controlplane-resolver dev`", () => {
  let client: ResolverClient;
  before(() => {
    client = new ResolverClient(`127.0.0.1:${dev.port}`);
  });
  after(() => client.close());

  test("ResolveEnv", T, async () => {
    const env = await client.resolveEnv(ids.prodEnv);
    assert.ok(env);
    assert.equal(env.id, ids.prodEnv);
    assert.equal(env.type, pb.EnvironmentType.PRODUCTION);
    assert.equal(env.organizationId, ids.org);
    assert.equal(env.maximumConcurrencyLimit, 50);
    assert.equal(env.archivedAt, undefined);
  });

  test("ResolveAuthenticatedEnv", T, async () => {
    const env = await client.resolveAuthenticatedEnv(ids.branchEnv);
    assert.ok(env);
    assert.equal(env.id, ids.branchEnv);
    assert.equal(env.type, pb.EnvironmentType.PREVIEW);
    assert.equal(env.branchName, "feature/login");
    assert.ok(env.apiKey.length > 0);
    assert.equal(env.git?.commitMessage, "Add the login form");
    assert.equal(env.git?.pullRequestNumber, 42);
    assert.ok(env.parentEnvironment?.id);
    assert.equal(env.project?.name, "Acme App");
    assert.equal(env.organization?.title, "Acme Inc.");
  });

  test("AssertEnvExists", T, async () => {
    assert.equal(await client.assertEnvExists(ids.stagingEnv), true);
    assert.equal(await client.assertEnvExists(ABSENT_CUID), false);
  });

  test("BatchResolveEnvs", T, async () => {
    const results = await client.batchResolveEnvs([ids.prodEnv, ids.stagingEnv, ABSENT_CUID]);
    assert.deepEqual(
      results.map((r) => [r.environmentId, r.notFound, r.environment?.type]),
      [
        [ids.prodEnv, false, pb.EnvironmentType.PRODUCTION],
        [ids.stagingEnv, false, pb.EnvironmentType.STAGING],
        [ABSENT_CUID, true, undefined],
      ],
    );
  });

  test("ResolveWorkerVersion", T, async () => {
    const prod = await client.resolveWorkerVersion(ids.prodEnv);
    assert.ok(prod?.worker);
    assert.equal(prod.worker.id, ids.worker);
    assert.deepEqual(prod.tasks.map((t) => t.slug).sort(), ["resize-image", "send-email"]);
    assert.ok(prod.queues.length > 0);
    assert.ok(prod.deployment?.shortCode);

    const development = await client.resolveWorkerVersion(ids.devEnv, {
      environmentType: pb.EnvironmentType.DEVELOPMENT,
    });
    assert.ok(development?.worker);
    assert.equal(development.worker.runtimeEnvironmentId, ids.devEnv);
    assert.equal(development.deployment, undefined);
  });

  test("ResolveRunLockedWorker", T, async () => {
    const both = await client.resolveRunLockedWorker({
      lockedById: ids.task,
      lockedToVersionId: ids.worker,
    });
    assert.equal(both.lockedBy?.id, ids.task);
    assert.equal(both.lockedBy?.worker?.id, ids.worker);
    assert.ok(both.lockedToVersion?.version);
    const none = await client.resolveRunLockedWorker({ lockedById: ABSENT_CUID });
    assert.equal(none.lockedBy, undefined);
    assert.equal(none.lockedToVersion, undefined);
  });

  test("ReadRun", T, async () => {
    const read = await client.readRun(ids.newRunFriendly, { includeEnvironment: true });
    assert.ok(read?.run);
    assert.equal(read.run.friendlyId, ids.newRunFriendly);
    assert.equal(read.run.status, "EXECUTING");
    assert.equal(read.source, pb.RunSource.RUN_OPS);
    assert.equal(read.residency, pb.Residency.NEW);
    assert.equal(read.environment?.id, ids.prodEnv);
    assert.equal(read.environmentUnresolved, false);

    const legacy = await client.readRun(ids.legacyRun);
    assert.equal(legacy?.source, pb.RunSource.LEGACY);
    assert.equal(legacy?.residency, pb.Residency.LEGACY);
    assert.equal(legacy?.environment, undefined);
  });

  test("BatchReadRuns", T, async () => {
    const results = await client.batchReadRuns([ids.newRun, ids.legacyRunFriendly, `run_${ABSENT_CUID}`]);
    assert.deepEqual(
      results.map((r) => [r.runId, r.notFound, r.source]),
      [
        [ids.newRun, false, pb.RunSource.RUN_OPS],
        [ids.legacyRunFriendly, false, pb.RunSource.LEGACY],
        [`run_${ABSENT_CUID}`, true, pb.RunSource.UNSPECIFIED],
      ],
    );
    assert.equal(results[0]?.run?.id, ids.newRun);
  });

  test("ClassifyRunId", T, async () => {
    const c = await client.classifyRunId(ids.legacyInRunOpsFriendly);
    assert.equal(c.body, ids.legacyInRunOpsFriendly.replace(/^run_/, ""));
    assert.equal(c.bodyLength, 25);
    assert.equal(c.classifiable, true);
    assert.equal(c.residency, pb.Residency.LEGACY);
    assert.deepEqual(c.readOrder, [pb.RunSource.RUN_OPS, pb.RunSource.LEGACY]);
  });

  test("ResolveMintKind", T, async () => {
    const kind = await client.resolveMintKind(ids.org);
    assert.equal(kind.kind, pb.MintKind.KSUID);
    assert.ok(kind.reason);
    // A child inherits its parent's kind.
    const child = await client.resolveMintKind(ids.org, { parentId: ids.legacyRun });
    assert.equal(child.kind, pb.MintKind.CUID);
  });

  test("MintId", T, async () => {
    const minted = await client.mintId(pb.IdKind.RUN, ids.org);
    assert.equal(minted.mintKind, pb.MintKind.KSUID);
    assert.equal(minted.id.length, 27);
    assert.equal(minted.friendlyId, `run_${minted.id}`);
    const batch = await client.mintId(pb.IdKind.BATCH, ids.org, { parentId: ids.legacyRun });
    assert.equal(batch.mintKind, pb.MintKind.CUID);
    assert.equal(batch.friendlyId, `batch_${batch.id}`);
  });

  test("MintId and ResolveMintKind send environmentId", T, async () => {
    // The organization placement rule (the default) validates and ignores it:
    // an invalid one is refused, so it went out on the wire.
    const minted = await client.mintId(pb.IdKind.RUN, ids.org, { environmentId: "cm0someenv" });
    assert.equal(minted.mintKind, pb.MintKind.KSUID);
    const bad = await failure(client.mintId(pb.IdKind.RUN, ids.org, { environmentId: "bad id!" }));
    assert.equal(bad.reason, "INVALID_ID");
    const kind = await failure(client.resolveMintKind(ids.org, { environmentId: "bad id!" }));
    assert.equal(kind.reason, "INVALID_ID");
  });

  test("MintId sends region", T, async () => {
    // dev mints ksuids, which carry no region: a valid name is validated and
    // ignored, a malformed one refused, so it went out on the wire.
    const minted = await client.mintId(pb.IdKind.RUN, ids.org, { region: "us-east-1" });
    assert.equal(minted.mintKind, pb.MintKind.KSUID);
    const bad = await failure(client.mintId(pb.IdKind.RUN, ids.org, { region: "us east 1" }));
    assert.equal(bad.reason, "INVALID_REGION");
    assert.equal(bad.metadata.field, "region");
  });

  test("SelectStoreForWaitpoint", T, async () => {
    const selection = await client.selectStoreForWaitpoint(
      ids.waitpoint,
      pb.UnblockRouteKind.MANUAL,
    );
    assert.equal(selection.residency, pb.Residency.NEW);
    assert.equal(selection.store, pb.Store.RUN_OPS);
    assert.equal(selection.pinReason, pb.PinReason.UNSPECIFIED);
  });

  test("a channel of one's own, with the service config", T, async () => {
    const channel = new Channel(`127.0.0.1:${dev.port}`, credentials.createInsecure(), {
      "grpc.service_config": serviceConfig(),
    });
    const own = new ResolverClient("ignored", { channel });
    try {
      assert.equal((await own.resolveEnv(ids.stagingEnv))?.type, pb.EnvironmentType.STAGING);
    } finally {
      own.close();
    }
  });

  test("Invalidate", T, async () => {
    assert.equal(await client.invalidate({ organizationId: ids.org }), undefined);
    assert.equal(await client.invalidate({ environmentId: ids.prodEnv }), undefined);
    assert.equal(await client.invalidate({ workerVersionsEnvironmentId: ids.prodEnv }), undefined);
  });
});

describe("NOT_FOUND and errors", () => {
  let client: ResolverClient;
  before(() => {
    client = new ResolverClient(`127.0.0.1:${dev.port}`);
  });
  after(() => client.close());

  test("NOT_FOUND resolves to null", T, async () => {
    assert.equal(await client.resolveEnv(ABSENT_CUID), null);
    assert.equal(await client.resolveAuthenticatedEnv(ABSENT_CUID), null);
    assert.equal(await client.resolveWorkerVersion(ABSENT_CUID), null);
    assert.equal(await client.readRun(`run_${ABSENT_CUID}`), null);
  });

  test("INVALID_ID carries its reason and metadata.field", T, async () => {
    const error = await failure(client.resolveEnv("not a valid id!"));
    assert.equal(error.code, Code.INVALID_ARGUMENT);
    assert.equal(error.codeName, "INVALID_ARGUMENT");
    assert.equal(error.reason, "INVALID_ID");
    assert.equal(error.domain, "controlplane-resolver");
    assert.deepEqual(error.metadata, { field: "environment_id" });
    assert.match(error.message, /^INVALID_ARGUMENT: .+ \[INVALID_ID\]$/);

    const batch = await failure(client.batchReadRuns([ids.newRun, "bad id!"]));
    assert.equal(batch.reason, "INVALID_ID");
    assert.equal(batch.metadata.field, "run_ids[1]");
  });

  test("INVALID_ENUM and INVALID_TARGET", T, async () => {
    const kind = await failure(client.mintId(pb.IdKind.UNSPECIFIED, ids.org));
    assert.equal(kind.reason, "INVALID_ENUM");
    const target = await failure(client.invalidate({} as never));
    assert.equal(target.code, Code.INVALID_ARGUMENT);
    assert.equal(target.reason, "INVALID_TARGET");
  });

  test("the request id goes out and comes back on errors", T, async () => {
    const error = await failure(client.resolveEnv("bad id!", { requestId: "ts-client-test-1" }));
    assert.equal(error.requestId, "ts-client-test-1");
  });

  test("deadlines: per client and per call", T, async () => {
    const silent = await silentListener();
    const quick = new ResolverClient(`127.0.0.1:${silent.port}`, { timeoutMs: 300 });
    try {
      let started = Date.now();
      const byClient = await failure(quick.classifyRunId("run_x"));
      assert.equal(byClient.code, Code.DEADLINE_EXCEEDED);
      assert.ok(Date.now() - started < 3000, `took ${Date.now() - started} ms`);

      started = Date.now();
      const byCall = await failure(quick.classifyRunId("run_x", { timeoutMs: 100 }));
      assert.equal(byCall.code, Code.DEADLINE_EXCEEDED);
      assert.equal(byCall.reason, null);
      assert.ok(Date.now() - started < 2000, `took ${Date.now() - started} ms`);
    } finally {
      quick.close();
      await silent.close();
    }
  });

  test("an AbortSignal cancels the call", T, async () => {
    const silent = await silentListener();
    const waiting = new ResolverClient(`127.0.0.1:${silent.port}`);
    try {
      const error = await failure(waiting.classifyRunId("run_x", { signal: AbortSignal.timeout(100) }));
      assert.equal(error.code, Code.CANCELLED);
      const already = await failure(waiting.classifyRunId("run_x", { signal: AbortSignal.abort() }));
      assert.equal(already.code, Code.CANCELLED);
    } finally {
      waiting.close();
      await silent.close();
    }
  });
});

describe("bearer tokens over mutual TLS (`serve` with a tokens file and a client CA)", () => {
  const make = (options: { token?: string; cert?: boolean; target?: string }): ResolverClient =>
    new ResolverClient(options.target ?? `127.0.0.1:${secure.port}`, {
      token: options.token,
      tlsCa: pki.ca,
      // Verify the certificate's DNS name (it names localhost too): Node
      // warns when TLS is asked to check an IP address by server name.
      channelOptions: { "grpc.ssl_target_name_override": "localhost" },
      ...(options.cert === false ? {} : { tlsCert: pki.clientCert, tlsKey: pki.clientKey }),
    });

  test("a known token is let in", T, async () => {
    const client = make({ token: ENGINE_TOKEN });
    try {
      const env = await client.resolveEnv(ids.prodEnv);
      assert.equal(env?.id, ids.prodEnv);
      assert.equal(await client.resolveEnv(ABSENT_CUID), null);
    } finally {
      client.close();
    }
  });

  test("no token, or an unknown one: UNAUTHENTICATED without a detail", T, async () => {
    for (const token of [undefined, "not-a-known-token"]) {
      const client = make({ token });
      try {
        const error = await failure(client.resolveEnv(ids.prodEnv));
        assert.equal(error.code, Code.UNAUTHENTICATED, String(token));
        assert.equal(error.reason, null);
        assert.deepEqual(error.metadata, {});
      } finally {
        client.close();
      }
    }
  });

  test("a method the token may not call: PERMISSION_DENIED", T, async () => {
    const engine = make({ token: ENGINE_TOKEN });
    const limited = make({ token: LIMITED_TOKEN });
    try {
      // "*" allows every method but ResolveAuthenticatedEnv (API keys).
      const secret = await failure(engine.resolveAuthenticatedEnv(ids.branchEnv));
      assert.equal(secret.code, Code.PERMISSION_DENIED);
      assert.equal((await limited.classifyRunId(ids.newRunFriendly)).residency, pb.Residency.NEW);
      const denied = await failure(limited.resolveEnv(ids.prodEnv));
      assert.equal(denied.code, Code.PERMISSION_DENIED);
    } finally {
      engine.close();
      limited.close();
    }
  });

  test("without a client certificate the handshake fails", T, async () => {
    // Its own target string: grpc-js keeps one retry throttle per target.
    const client = make({ token: ENGINE_TOKEN, cert: false, target: `ipv4:127.0.0.1:${secure.port}` });
    try {
      const error = await failure(client.resolveEnv(ids.prodEnv, { timeoutMs: 3000 }));
      assert.equal(error.code, Code.UNAVAILABLE, error.message);
      assert.equal(error.reason, null);
    } finally {
      client.close();
    }
  });
});

describe("retries of UNAVAILABLE (a server whose database is gone)", () => {
  test("4 attempts after the server's retry delay, then the retry throttle stops retrying", T, async () => {
    const client = new ResolverClient(`127.0.0.1:${outage.port}`);
    const attempts = (): Promise<number> =>
      handledCount(outage.metricsPort, "ResolveEnv", "UNAVAILABLE");
    try {
      const before = await attempts();
      const started = Date.now();
      const first = await failure(client.resolveEnv(ABSENT_CUID));
      const took = Date.now() - started;
      assert.equal(first.code, Code.UNAVAILABLE);
      assert.equal(first.reason, "DATABASE_UNAVAILABLE");
      // maxAttempts 4: the call and three retries reached the server…
      assert.equal((await settled(attempts, before + 4)) - before, 4);
      // …each retry after the server's pushback (1 s: its probe interval),
      // not the service config's backoff (50 ms, doubling: 350 ms at most).
      assert.ok(took >= 2900, `three retries took ${took} ms`);

      // gRFC A6 throttle (maxTokens 100, tokenRatio 0.1): each failed
      // attempt takes a token (100 → 96), and a retry needs more than half.
      // 11 calls at once make their 4 attempts each (→ 52, every retry
      // allowed: at least 53 left when each was due)…
      const many = await Promise.all(
        Array.from({ length: 11 }, () => failure(client.resolveEnv(ABSENT_CUID))),
      );
      assert.deepEqual(new Set(many.map((e) => e.reason)), new Set(["DATABASE_UNAVAILABLE"]));
      assert.equal((await settled(attempts, before + 48)) - before, 48);
      // …the next call is retried once (→ 51 → 50), and the one after not at all.
      await failure(client.resolveEnv(ABSENT_CUID));
      assert.equal((await settled(attempts, before + 50)) - before, 50);
      const last = await failure(client.resolveEnv(ABSENT_CUID));
      assert.equal(last.reason, "DATABASE_UNAVAILABLE");
      assert.equal((await settled(attempts, before + 51)) - before, 51);
    } finally {
      client.close();
    }
  });

  test("round robin: the retry goes to the next address and succeeds", T, async () => {
    // Two addresses: the server whose database is gone, and dev. Once both
    // are connected, calls alternate between them; one that lands on the
    // first is retried on dev. Calls go on (40 at most) until one has.
    const client = new ResolverClient(`ipv4:127.0.0.1:${outage.port},127.0.0.1:${dev.port}`);
    const refusals = (): Promise<number> =>
      handledCount(outage.metricsPort, "ResolveEnv", "UNAVAILABLE");
    try {
      const before = await refusals();
      for (let call = 0; call < 40 && (await refusals()) === before; call++) {
        const env = await client.resolveEnv(ids.prodEnv);
        assert.equal(env?.id, ids.prodEnv);
        await new Promise((resolve) => setTimeout(resolve, 25));
      }
      assert.ok((await refusals()) > before, "no call reached the server whose database is gone");
    } finally {
      client.close();
    }
  });
});

describe("a server process killed under load", () => {
  // As the Python client's test (tests/integration/test_client.py): the
  // channel reconnects 100 ms (±20 %) after the refused attempt began,
  // before the retries of the calls it failed meanwhile run out (350 ms
  // ±20 %), and 8 callers' failed attempts stay within the retry throttle's
  // tokens (with grpc-js's default backoff, 1 s, calls fail). 32 callers
  // empty the throttle: their calls, which never reached a server, ride
  // through on the client's second try once the channel is ready.
  for (const callersCount of [8, 32]) {
    test(`its connections reset, the reconnect refused: ${callersCount} callers ride through`, T, async () => {
      const link = await startLink(`127.0.0.1:${dev.port}`);
      const client = new ResolverClient(`127.0.0.1:${link.port}`);
      const codes = new Map<string, number>();
      const ok = (): number => codes.get("OK") ?? 0;
      let stop = false;
      const caller = async (): Promise<void> => {
        while (!stop) {
          let code: string;
          try {
            code = (await client.classifyRunId(ids.newRunFriendly)).classifiable ? "OK" : "wrong";
          } catch (error) {
            code = error instanceof ResolverError ? Code[error.code] : String(error);
          }
          codes.set(code, (codes.get(code) ?? 0) + 1);
        }
      };
      const callers = Array.from({ length: callersCount }, caller);
      try {
        for (let kill = 1; kill <= 3; kill++) {
          const answered = ok() + 50;
          await until(() => ok() >= answered, "calls answered");
          const accepted = link.accepted;
          link.kill(1);
          // The reconnect that was refused, then the one that was not.
          await until(() => link.accepted >= accepted + 2, "the client reconnected");
          assert.equal(link.refused, kill);
        }
        const answered = ok() + 50;
        await until(() => ok() >= answered, "calls answered");
      } finally {
        stop = true;
        await Promise.all(callers);
        client.close();
        await link.cut();
      }
      assert.deepEqual([...codes.keys()], ["OK"], JSON.stringify(Object.fromEntries(codes)));
    });
  }
});

describe("a server still starting", () => {
  test("is not bound: round robin leaves it out and no call fails", T, async () => {
    const client = new ResolverClient(`ipv4:127.0.0.1:${starting.port},127.0.0.1:${dev.port}`);
    try {
      for (let call = 0; call < 20; call++) {
        const env = await client.resolveEnv(ids.prodEnv);
        assert.equal(env?.id, ids.prodEnv);
      }
      // Not one attempt reached it (its metrics endpoint is up meanwhile).
      assert.equal(await handledCount(starting.metricsPort, "ResolveEnv", "UNAVAILABLE"), 0);
      assert.equal(await handledCount(starting.metricsPort, "ResolveEnv", "OK"), 0);
    } finally {
      client.close();
    }
  });
});
