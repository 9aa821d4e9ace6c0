/**
 * The subset of autocannon 8's programmatic API the benchmark uses (autocannon ships no types,
 * and @types/autocannon is not a dependency). Field names follow autocannon's README.
 */
declare module 'autocannon' {
  /** A request as `setupRequest` receives and returns it. */
  export interface AutocannonRequest {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
  }

  export interface AutocannonRequestSpec {
    method?: string;
    path?: string;
    headers?: Record<string, string>;
    body?: string | Buffer;
    /** Called before every request is sent; returns the request to send. */
    setupRequest?: (req: AutocannonRequest, context: Record<string, unknown>) => AutocannonRequest;
  }

  export interface AutocannonOptions {
    url: string;
    connections?: number;
    duration?: number;
    pipelining?: number;
    timeout?: number;
    requests?: AutocannonRequestSpec[];
  }

  /** Summary statistics autocannon reports for latency (ms), requests and throughput (per second). */
  export interface Histogram {
    average: number;
    mean: number;
    stddev: number;
    min: number;
    max: number;
    total: number;
    p50: number;
    p90: number;
    p99: number;
    p99_9?: number;
  }

  export interface AutocannonResult {
    latency: Histogram;
    requests: Histogram;
    throughput: Histogram;
    errors: number;
    timeouts: number;
    non2xx: number;
    /** Seconds the run lasted. */
    duration: number;
    '2xx': number;
    '4xx': number;
    '5xx': number;
  }

  /** The running load is also an event emitter: `response` carries each answer's latency in ms, unrounded. */
  export interface AutocannonEvents {
    on(event: 'response', listener: (client: unknown, statusCode: number, resBytes: number, responseTime: number) => void): unknown;
  }

  function autocannon(options: AutocannonOptions): Promise<AutocannonResult> & AutocannonEvents;
  export default autocannon;
}
