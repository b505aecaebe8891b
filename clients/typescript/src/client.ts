/**
 * ResolverClient: one typed method per RPC over a `@grpc/grpc-js` channel.
 *
 * Contract of every method (the same as the Python client's):
 *
 * - resolves to the response message, or the part of it named in its doc;
 * - resolves to `null` when the server answers `NOT_FOUND` (`resolveEnv`,
 *   `resolveAuthenticatedEnv`, `resolveWorkerVersion`, `readRun`), or to
 *   `false` (`assertEnvExists`); the other RPCs never answer `NOT_FOUND`;
 * - rejects with a {@link ResolverError} for every other failure, carrying
 *   the status code and the `google.rpc.ErrorInfo` reason and metadata;
 * - has a deadline: the client's `timeoutMs` (5 s unless given) or the
 *   call's own.
 *
 * `UNAVAILABLE` is retried by the channel itself, per `service_config.json`
 * (the Python client's, plus a retry throttle): at most 4 attempts with
 * exponential backoff from 50 ms up to 1 s, within the call's deadline. A
 * lost connection is made again at once, and a failed connection attempt is
 * tried again 100 ms after it began ({@link channelOptions}), before a
 * call's retries have run out. A call that failed `UNAVAILABLE` without
 * reaching a server is made again when the channel is ready within
 * {@link RECONNECT_WAIT_MS} (and the call's deadline), at most twice. The
 * channel balances calls round-robin over every address the target resolves
 * to, so `dns:///controlplane-resolver.<namespace>.svc.cluster.local:50051`
 * (a headless Service) spreads a process's calls over all replicas.
 */

import { create } from "@bufbuild/protobuf";
import type { DescMessage, DescMethodUnary, MessageInitShape, MessageShape } from "@bufbuild/protobuf";
import { Client, Metadata, credentials as grpcCredentials, status as Code } from "@grpc/grpc-js";
import type {
  ChannelCredentials,
  ChannelInterface,
  ChannelOptions,
  ClientOptions,
  MethodDefinition,
  ServiceError,
} from "@grpc/grpc-js";

import serviceConfigJson from "./service_config.json";
import { REQUEST_ID_KEY, ResolverError } from "./errors.js";
import * as pb from "./v1.js";

/** The default deadline of every call, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 5000;

/** A call that failed without reaching a resolver ({@link ResolverError.unreached})
 * is made again while the channel is ready within this long of the first
 * failure (and before the call's deadline), at most twice, as the Python
 * clients do. Their tries also wait for a connection, a call option grpc-js
 * lacks: a channel can say it is ready just after its connection was reset,
 * and here the third attempt is then the one on the next connection. */
export const RECONNECT_WAIT_MS = 1000;
const UNREACHED_RETRIES = 2;

const S = pb.ControlPlaneResolverService.method;

/** The channel's service config (round robin, retries, retry throttle), as JSON text. */
export function serviceConfig(): string {
  return JSON.stringify(serviceConfigJson);
}

/**
 * The channel options a channel to the resolver needs, then `extra` (which
 * overrides them): the service config, retries turned on, and the Python
 * client's reconnect backoff. After a failed connection attempt the next
 * one starts 100 ms after the failed one began (grpc-js's default: 1 s),
 * the wait growing 1.6 times per failure (±20 %) up to 5 s (default: 120 s).
 * A connection lost to a server process that died is so made again before
 * the retries of the calls it failed have run out (350 ms ±20 %).
 */
export function channelOptions(extra: ChannelOptions = {}): ChannelOptions {
  return {
    "grpc.service_config": serviceConfig(),
    "grpc.enable_retries": 1,
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 5000,
    ...extra,
  };
}

type Pem = Buffer | string;

export interface ResolverClientOptions {
  /** Default deadline of every call, in milliseconds (default 5000). The
   * service config's 5 s `timeout` caps every deadline, this one included. */
  timeoutMs?: number;
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** Speak TLS, verifying the server against the system roots (or `tlsCa`). */
  tls?: boolean;
  /** PEM CA bundle that verifies the server; implies TLS. */
  tlsCa?: Pem;
  /** PEM client certificate chain, for mutual TLS (with `tlsKey`); implies TLS. */
  tlsCert?: Pem;
  /** PEM private key of `tlsCert`; implies TLS. */
  tlsKey?: Pem;
  /** Channel credentials of your own, instead of `tls*` (e.g. a custom
   * `checkServerIdentity`). */
  credentials?: ChannelCredentials;
  /** Extra `@grpc/grpc-js` channel options; they override the defaults
   * ({@link channelOptions}: `grpc.service_config` included). */
  channelOptions?: ChannelOptions;
  /** An existing channel instead of one made from `target` and the options
   * above (it then carries its own service config: build it with
   * {@link channelOptions}). */
  channel?: ChannelInterface;
}

export interface CallOptions {
  /** This call's deadline in milliseconds, instead of the client's `timeoutMs`. */
  timeoutMs?: number;
  /** Cancels the call (it then rejects with `Code.CANCELLED`). */
  signal?: AbortSignal;
  /** Sent as `x-request-id`: the id of the call's server log line, echoed
   * back in `ResolverError.requestId` (1–64 of `[A-Za-z0-9._:=/+-]`, else the
   * server generates one). */
  requestId?: string;
}

/** Exactly one target of {@link ResolverClient.invalidate}. */
export type InvalidateTarget =
  | { environmentId: string; organizationId?: never; workerVersionsEnvironmentId?: never }
  | { organizationId: string; environmentId?: never; workerVersionsEnvironmentId?: never }
  | { workerVersionsEnvironmentId: string; environmentId?: never; organizationId?: never };

function pem(value: Pem | undefined): Buffer | null {
  if (value === undefined) return null;
  return typeof value === "string" ? Buffer.from(value) : value;
}

/**
 * A channel to the resolver and typed methods over it. One client (one
 * channel) is meant to be shared by a whole process; `close()` it when done.
 *
 * ```ts
 * const client = new ResolverClient("dns:///controlplane-resolver.ns.svc.cluster.local:50051", {
 *   token: process.env.RESOLVER_TOKEN, tls: true,
 * });
 * const env = await client.resolveEnv("cm4…"); // null when absent
 * ```
 */
export class ResolverClient {
  /** The underlying grpc-js client (its channel: `client.getChannel()`). */
  readonly client: Client;
  readonly timeoutMs: number;
  readonly #token: string | undefined;

  /**
   * @param target `host:port`, `dns:///name:port` (every address, round
   *   robin), or `ipv4:127.0.0.1:50051,127.0.0.1:50052`.
   */
  constructor(target: string, options: ResolverClientOptions = {}) {
    const { tls, tlsCa, tlsCert, tlsKey } = options;
    const secure = Boolean(tls || tlsCa || tlsCert || tlsKey);
    if (Boolean(tlsCert) !== Boolean(tlsKey)) {
      throw new TypeError("tlsCert and tlsKey go together: give both or neither");
    }
    if (options.credentials && secure) {
      throw new TypeError("give credentials or tls* options, not both");
    }
    if (options.channel && (secure || options.credentials || options.channelOptions)) {
      throw new TypeError(
        "channel is used as built: tls*, credentials and channelOptions configure a channel " +
          "the client builds, so they cannot be combined with it",
      );
    }
    const channelCredentials =
      options.credentials ??
      (secure
        ? grpcCredentials.createSsl(pem(tlsCa), pem(tlsKey), pem(tlsCert))
        : grpcCredentials.createInsecure());
    const clientOptions: ClientOptions = channelOptions(options.channelOptions);
    if (options.channel) {
      clientOptions.channelOverride = options.channel;
    }
    this.client = new Client(target, channelCredentials, clientOptions);
    this.timeoutMs = options.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    this.#token = options.token;
  }

  /** Closes the channel; calls in flight are cancelled. */
  close(): void {
    this.client.close();
  }

  // ------------------------------------------------------------ plumbing

  #metadata(options: CallOptions | undefined): Metadata {
    const metadata = new Metadata();
    if (this.#token) metadata.set("authorization", `Bearer ${this.#token}`);
    if (options?.requestId) metadata.set(REQUEST_ID_KEY, options.requestId);
    return metadata;
  }

  /** One unary call; every failure rejects with a ResolverError. A call
   * that never reached a server is made again when the channel is ready
   * within {@link RECONNECT_WAIT_MS} and the call's deadline (at most twice). */
  async #call<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions | undefined,
  ): Promise<MessageShape<O>> {
    const definition = pb.serviceDefinition[method.localName] as MethodDefinition<
      MessageShape<I>,
      MessageShape<O>
    >;
    const message = create(method.input, request);
    const deadline = Date.now() + (options?.timeoutMs ?? this.timeoutMs);
    let waitUntil = 0;
    for (let retries = 0; ; retries++) {
      try {
        return await this.#attempt(definition, message, deadline, options);
      } catch (error) {
        const unreached = error instanceof ResolverError && error.unreached;
        if (!unreached || retries === UNREACHED_RETRIES || options?.signal?.aborted) throw error;
        waitUntil ||= Math.min(deadline, Date.now() + RECONNECT_WAIT_MS);
        if (!(await this.#readyBy(waitUntil))) throw error;
      }
    }
  }

  /** Whether the channel is ready by `deadline` (a time in ms). */
  #readyBy(deadline: number): Promise<boolean> {
    return new Promise((resolve) => {
      this.client.waitForReady(deadline, (error?: Error) => resolve(!error));
    });
  }

  /** One attempt of a unary call. */
  #attempt<I, O>(
    definition: MethodDefinition<I, O>,
    message: I,
    deadline: number,
    options: CallOptions | undefined,
  ): Promise<O> {
    const signal = options?.signal;
    return new Promise((resolve, reject) => {
      if (signal?.aborted) {
        reject(new ResolverError(Code.CANCELLED, "cancelled before the call started", null, {}));
        return;
      }
      const onAbort = (): void => call.cancel();
      const call = this.client.makeUnaryRequest(
        definition.path,
        definition.requestSerialize,
        definition.responseDeserialize,
        message,
        this.#metadata(options),
        { deadline },
        (error: ServiceError | null, response?: O) => {
          signal?.removeEventListener("abort", onAbort);
          if (error) reject(ResolverError.fromServiceError(error));
          else resolve(response as O);
        },
      );
      signal?.addEventListener("abort", onAbort, { once: true });
    });
  }

  /** Like #call, but NOT_FOUND resolves to null. */
  async #callOrNull<I extends DescMessage, O extends DescMessage>(
    method: DescMethodUnary<I, O>,
    request: MessageInitShape<I>,
    options: CallOptions | undefined,
  ): Promise<MessageShape<O> | null> {
    try {
      return await this.#call(method, request, options);
    } catch (error) {
      if (error instanceof ResolverError && error.code === Code.NOT_FOUND) return null;
      throw error;
    }
  }

  // ---------------------------------------------------------------- RPCs

  /** The environment (ResolveEnv), or null when absent. */
  async resolveEnv(environmentId: string, options?: CallOptions): Promise<pb.Environment | null> {
    const response = await this.#callOrNull(S.resolveEnv, { environmentId }, options);
    return response && (response.environment ?? create(pb.EnvironmentSchema));
  }

  /** The environment with secrets and relations, or null when absent (or
   * its project is soft-deleted). */
  async resolveAuthenticatedEnv(
    environmentId: string,
    options?: CallOptions,
  ): Promise<pb.AuthenticatedEnvironment | null> {
    const response = await this.#callOrNull(S.resolveAuthenticatedEnv, { environmentId }, options);
    return response && (response.environment ?? create(pb.AuthenticatedEnvironmentSchema));
  }

  /** True when the environment exists, false when it does not. */
  async assertEnvExists(environmentId: string, options?: CallOptions): Promise<boolean> {
    return (await this.#callOrNull(S.assertEnvExists, { environmentId }, options)) !== null;
  }

  /** One result per id, in order; absent ids have `notFound` set. */
  async batchResolveEnvs(
    environmentIds: readonly string[],
    options?: CallOptions,
  ): Promise<pb.BatchResolveEnvsResult[]> {
    const response = await this.#call(
      S.batchResolveEnvs,
      { environmentIds: [...environmentIds] },
      options,
    );
    return response.results;
  }

  /** `worker`, `tasks`, `queues` and `deployment` (unset for development
   * workers), or null when the environment has no such worker version. */
  async resolveWorkerVersion(
    environmentId: string,
    options?: CallOptions & { environmentType?: pb.EnvironmentType; workerId?: string },
  ): Promise<pb.ResolveWorkerVersionResponse | null> {
    return this.#callOrNull(
      S.resolveWorkerVersion,
      { environmentId, environmentType: options?.environmentType, workerId: options?.workerId },
      options,
    );
  }

  /** `lockedBy` and `lockedToVersion`; each unset when absent. */
  async resolveRunLockedWorker(
    options: CallOptions & { lockedById?: string; lockedToVersionId?: string },
  ): Promise<pb.ResolveRunLockedWorkerResponse> {
    return this.#call(
      S.resolveRunLockedWorker,
      { lockedById: options.lockedById, lockedToVersionId: options.lockedToVersionId },
      options,
    );
  }

  /** The run with `source` and `residency` (and `environment` or
   * `environmentUnresolved` with `includeEnvironment`), or null when absent. */
  async readRun(
    runId: string,
    options?: CallOptions & { includeEnvironment?: boolean },
  ): Promise<pb.ReadRunResponse | null> {
    return this.#callOrNull(
      S.readRun,
      { runId, includeEnvironment: options?.includeEnvironment ?? false },
      options,
    );
  }

  /** One result per id, in order; absent ids have `notFound` set. */
  async batchReadRuns(
    runIds: readonly string[],
    options?: CallOptions,
  ): Promise<pb.BatchReadRunsResult[]> {
    const response = await this.#call(S.batchReadRuns, { runIds: [...runIds] }, options);
    return response.results;
  }

  /** How an id is classified and where `readRun` would look for it. */
  async classifyRunId(id: string, options?: CallOptions): Promise<pb.ClassifyRunIdResponse> {
    return this.#call(S.classifyRunId, { id }, options);
  }

  /** Which kind of id (cuid or ksuid) a new run of the organization gets. */
  async resolveMintKind(
    organizationId: string,
    options?: CallOptions & { parentId?: string; environmentId?: string },
  ): Promise<pb.ResolveMintKindResponse> {
    return this.#call(
      S.resolveMintKind,
      { organizationId, parentId: options?.parentId, environmentId: options?.environmentId },
      options,
    );
  }

  /** A new run or batch id (`id`, `friendlyId`, `mintKind`, `shard`,
   * `shardReason`). `environmentId` (the environment a root run is triggered
   * in) is required by a server placing root runs by environment
   * (`RUN_OPS_SHARD_PLACEMENT=platform`) and ignored by others. `region` is
   * the region name the trigger asks for (`body.options.region`, e.g.
   * `"us-east-1"`): a run's v1 id stamps its char (an unknown name `0`);
   * without it the server's `RUN_OPS_REGION`. Batch and gen-2 ids ignore it. */
  async mintId(
    kind: pb.IdKind,
    organizationId: string,
    options?: CallOptions & { parentId?: string; environmentId?: string; region?: string },
  ): Promise<pb.MintIdResponse> {
    return this.#call(
      S.mintId,
      {
        kind,
        organizationId,
        parentId: options?.parentId,
        environmentId: options?.environmentId,
        region: options?.region,
      },
      options,
    );
  }

  /** Which store a waitpoint completion is written to (`store`,
   * `residency`, `pinReason`). */
  async selectStoreForWaitpoint(
    waitpointId: string,
    routeKind: pb.UnblockRouteKind,
    options?: CallOptions & {
      treeOwnerResidency?: pb.Residency;
      crossTreeIdempotency?: boolean;
      hasLegacyParent?: boolean;
    },
  ): Promise<pb.SelectStoreForWaitpointResponse> {
    return this.#call(
      S.selectStoreForWaitpoint,
      {
        waitpointId,
        routeKind,
        treeOwnerResidency: options?.treeOwnerResidency,
        crossTreeIdempotency: options?.crossTreeIdempotency ?? false,
        hasLegacyParent: options?.hasLegacyParent ?? false,
      },
      options,
    );
  }

  /** Drops this replica's cached answers about one target (NOTIFY reaches
   * every replica). Not exactly one target: the server's `INVALID_TARGET`. */
  async invalidate(target: InvalidateTarget, options?: CallOptions): Promise<void> {
    const given: pb.InvalidateRequest["target"][] = [];
    if (target.environmentId !== undefined) {
      given.push({ case: "environmentId", value: target.environmentId });
    }
    if (target.organizationId !== undefined) {
      given.push({ case: "organizationId", value: target.organizationId });
    }
    if (target.workerVersionsEnvironmentId !== undefined) {
      given.push({ case: "workerVersionsEnvironmentId", value: target.workerVersionsEnvironmentId });
    }
    // Zero or several targets: send none, so the server answers INVALID_TARGET.
    await this.#call(S.invalidate, given.length === 1 ? { target: given[0] } : {}, options);
  }
}

export { Code };
