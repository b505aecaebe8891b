/**
 * The package itself, no server: generated code up to date with the protos,
 * the service config the same as the Python client's, one method per RPC,
 * and the entry points loadable from CommonJS and from ESM.
 */

import assert from "node:assert/strict";
import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { test } from "node:test";

import { Channel, credentials } from "@grpc/grpc-js";

import { ResolverClient, channelOptions, pb, serviceConfig } from "@controlplane-resolver/client";

import { PACKAGE_ROOT, REPO_ROOT } from "./support/servers.js";

test("src/gen is up to date with the protos (npm run generate)", { timeout: 60_000 }, () => {
  const result = spawnSync(process.execPath, ["scripts/generate.js", "--check"], {
    cwd: PACKAGE_ROOT,
    encoding: "utf8",
  });
  assert.equal(result.status, 0, `${result.stdout}\n${result.stderr}`);
});

test("the service config is the Python client's", () => {
  const python = JSON.parse(
    fs.readFileSync(
      path.join(REPO_ROOT, "client", "controlplane_resolver_client", "service_config.json"),
      "utf8",
    ),
  );
  const ours = JSON.parse(serviceConfig());
  assert.deepEqual(ours, python);
  assert.deepEqual(ours.loadBalancingConfig, [{ round_robin: {} }]);
  assert.deepEqual(ours.methodConfig[0].retryPolicy.retryableStatusCodes, ["UNAVAILABLE"]);
  assert.deepEqual(ours.retryThrottling, { maxTokens: 100, tokenRatio: 0.1 });
});

test("the channel reconnects as the Python client's does; the caller's options override", () => {
  const defaults = channelOptions();
  assert.equal(defaults["grpc.service_config"], serviceConfig());
  assert.equal(defaults["grpc.enable_retries"], 1);
  assert.equal(defaults["grpc.initial_reconnect_backoff_ms"], 100);
  assert.equal(defaults["grpc.max_reconnect_backoff_ms"], 5000);
  const mine = channelOptions({ "grpc.initial_reconnect_backoff_ms": 1000, "grpc.keepalive_time_ms": 60000 });
  assert.equal(mine["grpc.initial_reconnect_backoff_ms"], 1000);
  assert.equal(mine["grpc.keepalive_time_ms"], 60000);
  assert.equal(mine["grpc.max_reconnect_backoff_ms"], 5000);
});

test("ResolverClient has a method for every unary RPC; the stream is in the raw definition", () => {
  assert.equal(
    pb.ControlPlaneResolverService.methods.length,
    Object.keys(pb.serviceDefinition).length,
  );
  assert.equal(pb.serviceDefinition.watchInvalidations.responseStream, true);
  const methods = pb.ControlPlaneResolverService.methods
    .filter((m) => m.methodKind === "unary")
    .map((m) => m.localName);
  const missing = methods.filter(
    (name) => typeof (ResolverClient.prototype as unknown as Record<string, unknown>)[name] !== "function",
  );
  assert.deepEqual(missing, []);
});

test("the entry points load from ESM and from CommonJS", { timeout: 30_000 }, () => {
  const esm = `
    import { ResolverClient, ResolverError, Code, pb } from "@controlplane-resolver/client";
    import { SERVICE_NAME, EnvironmentType } from "@controlplane-resolver/client/v1";
    console.log([typeof ResolverClient, typeof ResolverError, Code.NOT_FOUND, pb.SERVICE_NAME,
      SERVICE_NAME, EnvironmentType.PRODUCTION].join(" "));`;
  const cjs = `
    const { ResolverClient, pb } = require("@controlplane-resolver/client");
    const config = require("@controlplane-resolver/client/service_config.json");
    console.log(typeof ResolverClient, pb.SERVICE_NAME, config.methodConfig[0].retryPolicy.maxAttempts);`;
  const run = (args: string[]): string => {
    const result = spawnSync(process.execPath, args, { cwd: PACKAGE_ROOT, encoding: "utf8" });
    assert.equal(result.status, 0, result.stderr);
    return result.stdout.trim();
  };
  const service = "controlplane.resolver.v1.ControlPlaneResolverService";
  assert.equal(
    run(["--input-type=module", "-e", esm]),
    `function function 5 ${service} ${service} 1`,
  );
  assert.equal(run(["-e", cjs]), `function ${service} 4`);
});

test("conflicting constructor options are refused", () => {
  assert.throws(() => new ResolverClient("127.0.0.1:1", { tlsCert: "x" }), /go together/);
  assert.throws(
    () => new ResolverClient("127.0.0.1:1", { tls: true, credentials: credentials.createInsecure() }),
    /not both/,
  );
  const channel = new Channel("127.0.0.1:1", credentials.createInsecure(), {});
  try {
    assert.throws(() => new ResolverClient("127.0.0.1:1", { channel, tls: true }), /used as built/);
  } finally {
    channel.close();
  }
});
