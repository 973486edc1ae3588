/* Trains a linear softmax classifier with a lossc loss from C: the loss and its gradient with respect to
 * the scores come from one call; the chain rule to the weights is written out here.
 *
 *   cargo build --release -p lossc-capi
 *   cc -O2 -Iinclude examples/c/train.c -Ltarget/release -llossc_c -Wl,-rpath,$PWD/target/release -lm -o train
 *   ./train
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "lossc.h"

#define N 256
#define D 8
#define C 4

static const char *SOURCE =
    "/// Cross-entropy with a temperature.\n"
    "loss ce(s: f32[N, C], y: idx[N] < C, t: f32 = 1.0) {\n"
    "    mean[i] (logsumexp[k] s[i, k] / t) - s[i, y[i]] / t\n"
    "}\n";

static uint64_t state = 42;
static double uniform(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(state >> 11) / 9007199254740992.0;
}

int main(void) {
    char *error = NULL;
    lossc_module *module = lossc_compile(SOURCE, "ce.lx", &error);
    if (!module) {
        fprintf(stderr, "%s\n", error);
        lossc_string_free(error);
        return 1;
    }
    printf("losses: %zu (%s)\n", lossc_module_loss_count(module), lossc_module_loss_name(module, 0));
    lossc_loss *ce = lossc_module_loss(module, "ce", 1, &error);
    if (!ce) {
        fprintf(stderr, "%s\n", error);
        lossc_string_free(error);
        return 1;
    }

    /* Data: class k's points around a center of their own. */
    static float x[N * D], w[D * C], s[N * C], grad_s[N * C];
    static int64_t y[N];
    float centers[C][D];
    for (int k = 0; k < C; k++)
        for (int d = 0; d < D; d++) centers[k][d] = (float)(2.0 * uniform() - 1.0);
    for (int i = 0; i < N; i++) {
        y[i] = (int64_t)(uniform() * C);
        for (int d = 0; d < D; d++) x[i * D + d] = centers[y[i]][d] + (float)(0.5 * (uniform() - 0.5));
    }

    size_t s_shape[2] = {N, C}, y_shape[1] = {N};
    lossc_input inputs[2] = {
        {"s", s, LOSSC_F32, 2, s_shape},
        {"y", y, LOSSC_I64, 1, y_shape},
    };
    lossc_hyper hypers[1] = {{"t", 0.5}};
    lossc_grad grads[1] = {{"s", grad_s, N * C}};
    float loss = 0;
    for (int step = 0; step < 50; step++) {
        for (int i = 0; i < N; i++)
            for (int k = 0; k < C; k++) {
                float acc = 0;
                for (int d = 0; d < D; d++) acc += x[i * D + d] * w[d * C + k];
                s[i * C + k] = acc;
            }
        int status = lossc_loss_call(ce, inputs, 2, hypers, 1, grads, 1, &loss, &error);
        if (status != LOSSC_OK) {
            fprintf(stderr, "error %d: %s\n", status, error);
            lossc_string_free(error);
            return 1;
        }
        if (step % 10 == 0 || step == 49) printf("step %d: loss %.4f\n", step, loss);
        for (int d = 0; d < D; d++)
            for (int k = 0; k < C; k++) {
                float g = 0;
                for (int i = 0; i < N; i++) g += x[i * D + d] * grad_s[i * C + k];
                w[d * C + k] -= 0.5f * g;
            }
    }

    /* A bad call: a label out of range is an error code and a message, never a crash. */
    y[3] = C;
    int status = lossc_loss_call(ce, inputs, 2, NULL, 0, grads, 1, &loss, &error);
    printf("bad label: status %d: %s\n", status, error);
    lossc_string_free(error);

    /* A compile error: the rendered diagnostics. */
    lossc_module *bad = lossc_compile("loss f(x: f32[N]) { mean[i] x[j] }", "bad.lx", &error);
    printf("bad source: %s (%s)\n", bad ? "compiled" : "rejected", strstr(error, "unknown name `j`") ? "unknown name `j`" : error);
    lossc_string_free(error);

    lossc_loss_free(ce);
    lossc_module_free(module);
    return 0;
}
