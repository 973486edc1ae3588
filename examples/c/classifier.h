/* The linear softmax classifier both C examples train (train.c through the C API, aot_train.c through an
 * ahead-of-time library): synthetic data, the scores s = x w, and an SGD step on w from the gradient with
 * respect to the scores (the chain rule to the weights, written out). */
#ifndef LOSSC_EXAMPLE_CLASSIFIER_H
#define LOSSC_EXAMPLE_CLASSIFIER_H

#include <stdint.h>

#define N 256
#define D 8
#define C 4

static uint64_t state = 42;
static double uniform(void) {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return (double)(state >> 11) / 9007199254740992.0;
}

/* N points in D dimensions, class k's around a center of their own. */
static void make_data(float *x, int64_t *y) {
    float centers[C][D];
    for (int k = 0; k < C; k++)
        for (int d = 0; d < D; d++) centers[k][d] = (float)(2.0 * uniform() - 1.0);
    for (int i = 0; i < N; i++) {
        y[i] = (int64_t)(uniform() * C);
        for (int d = 0; d < D; d++) x[i * D + d] = centers[y[i]][d] + (float)(0.5 * (uniform() - 0.5));
    }
}

/* s = x w: [N, C] scores. */
static void scores(const float *x, const float *w, float *s) {
    for (int i = 0; i < N; i++)
        for (int k = 0; k < C; k++) {
            float acc = 0;
            for (int d = 0; d < D; d++) acc += x[i * D + d] * w[d * C + k];
            s[i * C + k] = acc;
        }
}

/* w -= rate * x^T grad_s. */
static void sgd_step(const float *x, const float *grad_s, float *w, float rate) {
    for (int d = 0; d < D; d++)
        for (int k = 0; k < C; k++) {
            float g = 0;
            for (int i = 0; i < N; i++) g += x[i * D + d] * grad_s[i * C + k];
            w[d * C + k] -= rate * g;
        }
}

#endif
