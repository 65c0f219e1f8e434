/* tlsprims.c — times the mbedTLS 2.28 primitives a TLS 1.2 server handshake
 * spends its CPU on, to choose key-exchange groups and the certificate type
 * by measurement: ECDHE keygen + shared secret for X25519, P-256 and P-384,
 * and a signature with ECDSA P-256, RSA-2048 and RSA-3072. Prints the
 * median of several runs in microseconds per operation (process CPU time).
 * A measuring tool: never part of the server or the tests. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <mbedtls/ctr_drbg.h>
#include <mbedtls/ecdh.h>
#include <mbedtls/ecdsa.h>
#include <mbedtls/entropy.h>
#include <mbedtls/rsa.h>

#define RUNS 7

static mbedtls_ctr_drbg_context drbg;

static double cpu_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* One ECDHE as the server does it: our key pair, the peer's public value
 * (made outside the timing), the shared secret. */
static double ecdhe_us(mbedtls_ecp_group_id id, int n)
{
    mbedtls_ecp_group grp;
    mbedtls_ecp_point peer, ours, unused;
    mbedtls_mpi d, peer_d, z;
    mbedtls_ecp_group_init(&grp);
    mbedtls_ecp_point_init(&peer);
    mbedtls_ecp_point_init(&ours);
    mbedtls_ecp_point_init(&unused);
    mbedtls_mpi_init(&d);
    mbedtls_mpi_init(&peer_d);
    mbedtls_mpi_init(&z);
    mbedtls_ecp_group_load(&grp, id);
    mbedtls_ecdh_gen_public(&grp, &peer_d, &peer, mbedtls_ctr_drbg_random, &drbg);
    double t = cpu_now();
    for (int i = 0; i < n; i++) {
        mbedtls_ecdh_gen_public(&grp, &d, &ours, mbedtls_ctr_drbg_random, &drbg);
        mbedtls_ecdh_compute_shared(&grp, &z, &peer, &d, mbedtls_ctr_drbg_random, &drbg);
    }
    t = (cpu_now() - t) / n * 1e6;
    mbedtls_ecp_group_free(&grp);
    mbedtls_ecp_point_free(&peer);
    mbedtls_ecp_point_free(&ours);
    mbedtls_ecp_point_free(&unused);
    mbedtls_mpi_free(&d);
    mbedtls_mpi_free(&peer_d);
    mbedtls_mpi_free(&z);
    return t;
}

static double ecdsa_us(int n)
{
    mbedtls_ecdsa_context k;
    mbedtls_ecdsa_init(&k);
    mbedtls_ecdsa_genkey(&k, MBEDTLS_ECP_DP_SECP256R1, mbedtls_ctr_drbg_random, &drbg);
    unsigned char hash[32] = {1}, sig[MBEDTLS_ECDSA_MAX_LEN];
    size_t slen;
    double t = cpu_now();
    for (int i = 0; i < n; i++)
        mbedtls_ecdsa_write_signature(&k, MBEDTLS_MD_SHA256, hash, sizeof hash, sig, &slen,
                                      mbedtls_ctr_drbg_random, &drbg);
    t = (cpu_now() - t) / n * 1e6;
    mbedtls_ecdsa_free(&k);
    return t;
}

static mbedtls_rsa_context rsa[2];

static double rsa_us(int which, int n)
{
    unsigned char hash[32] = {1}, sig[512];
    double t = cpu_now();
    for (int i = 0; i < n; i++)
        mbedtls_rsa_pkcs1_sign(&rsa[which], mbedtls_ctr_drbg_random, &drbg, MBEDTLS_RSA_PRIVATE,
                               MBEDTLS_MD_SHA256, sizeof hash, hash, sig);
    return (cpu_now() - t) / n * 1e6;
}

static double median(double (*f)(int, int), int arg, int n)
{
    double v[RUNS];
    for (int r = 0; r < RUNS; r++) v[r] = f(arg, n);
    qsort(v, RUNS, sizeof v[0], cmp);
    return v[RUNS / 2];
}

static double f_ecdhe(int id, int n) { return ecdhe_us((mbedtls_ecp_group_id)id, n); }
static double f_ecdsa(int unused, int n) { (void)unused; return ecdsa_us(n); }
static double f_rsa(int which, int n) { return rsa_us(which, n); }

int main(void)
{
    mbedtls_entropy_context ent;
    mbedtls_entropy_init(&ent);
    mbedtls_ctr_drbg_init(&drbg);
    if (mbedtls_ctr_drbg_seed(&drbg, mbedtls_entropy_func, &ent, NULL, 0) != 0) return 1;
    const int bits[2] = {2048, 3072};
    for (int i = 0; i < 2; i++) {
        mbedtls_rsa_init(&rsa[i], MBEDTLS_RSA_PKCS_V15, 0);
        if (mbedtls_rsa_gen_key(&rsa[i], mbedtls_ctr_drbg_random, &drbg, (unsigned)bits[i], 65537))
            return 1;
    }
    printf("mbedTLS primitives, CPU microseconds per operation, median of %d runs\n", RUNS);
    printf("ECDHE X25519 keygen+shared  %8.0f\n", median(f_ecdhe, MBEDTLS_ECP_DP_CURVE25519, 50));
    printf("ECDHE P-256  keygen+shared  %8.0f\n", median(f_ecdhe, MBEDTLS_ECP_DP_SECP256R1, 50));
    printf("ECDHE P-384  keygen+shared  %8.0f\n", median(f_ecdhe, MBEDTLS_ECP_DP_SECP384R1, 20));
    printf("ECDSA P-256 sign            %8.0f\n", median(f_ecdsa, 0, 50));
    printf("RSA-2048 sign               %8.0f\n", median(f_rsa, 0, 20));
    printf("RSA-3072 sign               %8.0f\n", median(f_rsa, 1, 10));
    return 0;
}
